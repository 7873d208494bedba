"""Find and read run directories (the layout of ``rnnlab.rundir.RunDir``, see ARCHITECTURE.md).

A run directory is a folder holding ``run.json``; its per-epoch metrics are in
``metrics.jsonl`` and its resolved config in ``config.toml``. Reading never modifies anything.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab.errors import ReportError, RnnlabError
from rnnlab.rundir import RunDir

__all__ = ["ReportError", "RunRecord", "discover_runs", "is_run_dir", "read_run"]


#: Keys every metrics row must hold, as finite numbers, for the run to count as a result.
REQUIRED_METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
#: The same for a run trained with ``test_every_epoch = false`` (its one test result is in run.json).
REQUIRED_METRICS_FINAL_TEST = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")

#: Folders inside a run directory that never hold other runs.
_SKIP_DIRS = {RunDir.CHECKPOINTS, RunDir.TENSORBOARD, "__pycache__", ".git"}


@dataclass
class RunRecord:
    """One run directory, read as far as it could be.

    ``rows`` are the metrics rows sorted by epoch (a row re-written by a resume replaces the
    earlier one). ``problem`` is ``None`` for a complete run, else why it is not a result.
    """

    path: Path
    name: str
    seed: int | None
    status: str
    epochs: int | None
    num_params: int | None
    rows: list[dict[str, Any]]
    info: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def kind(self) -> str:
        """``"baseline"`` for the bag-of-words baseline, else ``"rnn"``."""
        return str(self.info.get("kind", "rnn"))

    @property
    def test_once(self) -> bool:
        """True for a run evaluated on test once, on its best-validation checkpoint (``test_every_epoch=false``)."""
        return self.config.get("test_every_epoch") is False

    def final_test(self) -> tuple[float, float, int]:
        """``(test_acc, test_loss, epoch)`` of the run's result: the last epoch's test metrics, or for a
        ``test_once`` run the single test pass on the epoch chosen by validation accuracy."""
        if self.test_once:
            t = self.info["test"]
            return float(t["acc"]), float(t["loss"]), int(t["epoch"])
        return float(self.rows[-1]["test_acc"]), float(self.rows[-1]["test_loss"]), int(self.rows[-1]["epoch"])

    def best_test(self) -> tuple[float, int]:
        """``(test_acc, epoch)``: the highest per-epoch test accuracy (for a ``test_once`` run, its one test)."""
        if self.test_once:
            acc, _, epoch = self.final_test()
            return acc, epoch
        row = max(self.rows, key=lambda r: r["test_acc"])
        return float(row["test_acc"]), int(row["epoch"])

    def column(self, key: str) -> list[float]:
        """The values of one metric over epochs (rows lacking it are skipped)."""
        return [float(r[key]) for r in self.rows if _is_number(r.get(key))]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_run_dir(path: Path) -> bool:
    return RunDir(path).is_run()


def discover_runs(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Every run directory at or below each path, in sorted order, without duplicates.

    Raises ReportError for a path that does not exist, and when nothing is found.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise ReportError(f"{root}: no such file or directory (expected a run directory or a folder of runs)")
        if not root.is_dir():
            raise ReportError(f"{root}: is a file; expected a run directory (holding run.json) or a folder of runs")
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            if is_run_dir(here):
                key = here.resolve()
                if key not in seen:
                    seen.add(key)
                    found.append(here)
                dirnames[:] = []  # a run directory does not nest other runs
    if not found:
        raise ReportError(
            "no run directories found under "
            + ", ".join(str(p) for p in paths)
            + " (a run directory holds run.json and metrics.jsonl, as written by `rnnlab train`)"
        )
    return found


def read_run(path: Path) -> RunRecord:
    """Read one run directory; never raises for a damaged run (it becomes an incomplete record)."""
    rd = RunDir(path)
    path = rd.path
    problem: str | None = None
    try:
        info = rd.read_info(check_format=False)
    except RnnlabError as err:
        info, problem = {}, f"run.json is unreadable ({err})"
    try:
        config = rd.read_config_values()
    except RnnlabError:
        config = {}
    name = str(info.get("name") or config.get("name") or path.name)
    seed = info.get("seed", config.get("seed"))
    seed = int(seed) if _is_number(seed) else None
    status = str(info.get("status", "unknown"))
    epochs = info.get("epochs", config.get("epochs"))
    epochs = int(epochs) if _is_number(epochs) else None
    num_params = info.get("num_params")
    num_params = int(num_params) if _is_number(num_params) else None

    rows, rows_problem = _metrics(rd)
    if problem is None and status != "complete":
        problem = f"status {status!r}, {len(rows)} of {epochs if epochs is not None else '?'} epochs done"
        if rows_problem is not None:
            problem += f" ({rows_problem})"
    if problem is None and rows_problem is not None:
        problem = rows_problem
    if problem is None:
        done = info.get("epochs_completed")
        # A run stopped early on purpose is complete with fewer epochs than planned.
        early_stopped = _is_number(done) and bool(info.get("stopped_early") or config.get("early_stopping"))
        needed = int(done) if early_stopped else epochs
        if needed is None:
            problem = "run.json does not say how many epochs the run has"
        elif len(rows) < needed:
            problem = f"{len(rows)} of {needed} epochs in metrics.jsonl"
    test_once = config.get("test_every_epoch") is False
    if problem is None and test_once:
        test = info.get("test")
        if not (isinstance(test, dict) and all(_is_number(test.get(k)) for k in ("acc", "loss", "epoch"))):
            problem = "test_every_epoch=false but run.json has no final test result (acc, loss, epoch)"
    if problem is None:
        required = REQUIRED_METRICS_FINAL_TEST if test_once else REQUIRED_METRICS
        for row in rows:
            missing = [k for k in required if not _is_number(row.get(k))]
            if missing:
                problem = f"epoch {row['epoch']}: no finite {', '.join(missing)} in metrics.jsonl"
                break
    if problem is not None and status == "complete":
        status = "damaged"
    return RunRecord(path, name, seed, status, epochs, num_params, rows, info, config, problem)


def _metrics(rd: RunDir) -> tuple[list[dict[str, Any]], str | None]:
    """The metrics rows, and why they cannot be trusted (a missing file, a damaged or cut-short line)."""
    if not rd.metrics_path.is_file():
        return [], "metrics.jsonl is missing"
    try:
        scan = rd.scan_metrics()
    except RnnlabError as err:
        return [], str(err)
    return scan.rows, scan.problem
