"""Planning a comparison: every (experiment, seed) run, and whether it is new, to resume, or complete."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rnnlab.errors import ReportError, RnnlabError
from rnnlab.rundir import ComparisonDir, RunDir
from rnnlab.train.config import Config, config_from_toml
from rnnlab.train.runner import RESUME_MUTABLE

#: Config keys that may differ between a finished run and the planned one for it to be reused.
REUSE_IGNORES = set(RESUME_MUTABLE) - {"epochs", "name"}


@dataclass
class PlannedRun:
    config: Config
    run_dir: Path
    k: int
    state: str  # "new" | "resume" | "complete"
    done_epochs: int = 0

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def label(self) -> str:
        """``name seed s``."""
        return f"{self.config.name} seed {self.config.seed}"


def plan_run(config: Config, rd: RunDir, k: int) -> PlannedRun:
    """Decide whether a run is new, to resume, or complete (and reusable with this config)."""
    if rd.is_empty():
        return PlannedRun(config, rd.path, k, "new")
    if not rd.is_run() or not rd.config_path.is_file():
        raise ReportError(
            f"{rd.path} exists but is not a run directory (no run.json/config.toml); "
            "move it away or choose another --out"
        )
    try:
        info = rd.read_info()
        old = config_from_toml(rd.config_path)
        rows = rd.read_metrics()
    except RnnlabError as err:
        raise ReportError(f"{rd.path}: unreadable run ({err}); move it away or choose another --out") from None
    diffs = [
        f"{f}: run has {getattr(old, f)!r}, now {getattr(config, f)!r}"
        for f in old.to_dict()
        if f not in REUSE_IGNORES and getattr(old, f) != getattr(config, f)
    ]
    if len(rows) > config.epochs:
        raise ReportError(
            f"{rd.path} has {len(rows)} epochs done, more than the {config.epochs} asked for; "
            "use another --out for fewer epochs"
        )
    if info.get("status") == "complete" and not diffs:
        return PlannedRun(config, rd.path, k, "complete", len(rows))
    if any(not d.startswith("epochs:") for d in diffs):  # more epochs than before: resume extends the run
        raise ReportError(
            f"{rd.path} was run with another config ({'; '.join(diffs)}); a comparison keeps "
            "its settings: use another --out to compare new settings"
        )
    return PlannedRun(config, rd.path, k, "resume", len(rows))


def plan_comparison(configs: list[Config], out: ComparisonDir | str | os.PathLike, seeds: int) -> list[PlannedRun]:
    """Every (experiment, seed) run and its state; raises before anything runs if one is unusable."""
    out = out if isinstance(out, ComparisonDir) else ComparisonDir(out)
    return [plan_run(c.replace(seed=c.seed + k), out.run_dir(c.name, k), k) for c in configs for k in range(seeds)]
