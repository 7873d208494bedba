"""``rnnlab compare``: run a suite of experiments x seeds into one comparison folder, then report on it.

The folder's layout is :class:`rnnlab.rundir.ComparisonDir`'s: ``DIR/compare.json`` (the manifest),
``DIR/<name>/seed<k>/`` (a run directory per experiment and seed, seed = config.seed + k),
``DIR/nbsvm_bigram/`` (the bag-of-words baseline), the report (``results.md``, ``results.csv``,
plots). The folder is locked while a comparison writes it: a second ``compare`` on it is refused.

Running the same command again skips complete runs and resumes incomplete ones, so an
interrupted comparison continues where it stopped. ``--jobs N`` trains up to N runs at once in
worker processes (:mod:`rnnlab.experiments.pool`; their output in ``DIR/<name>/seed<k>.worker.log``).

The steps: plan the runs (:mod:`~rnnlab.experiments.plan`), record the invocation in the
manifest, fit the baseline, train the pending runs (in this process, or in the pool) with an
ETA (:mod:`~rnnlab.experiments.eta`) from the data of :mod:`~rnnlab.experiments.provider`, write
the report (``rnnlab.report.write_report``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from rnnlab import __version__
from rnnlab.errors import ReportError, RnnlabError, TrainingError
from rnnlab.experiments.baseline import BASELINE_NAME, nbsvm, write_baseline_run
from rnnlab.experiments.eta import Eta, fmt_duration, recurrent_cost
from rnnlab.experiments.parallel import run_parallel
from rnnlab.experiments.plan import PlannedRun, plan_comparison
from rnnlab.experiments.provider import DataProvider
from rnnlab.report.build import Report, write_report
from rnnlab.rundir import ComparisonDir, RunDir
from rnnlab.train import Config, load_suite, train_and_evaluate
from rnnlab.train.callbacks import Callback
from rnnlab.train.dataset import data_source

MANIFEST = ComparisonDir.MANIFEST
MANIFEST_KIND = ComparisonDir.KIND


@dataclass
class ComparisonResult:
    out_dir: Path
    runs: list[PlannedRun]
    trained: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    baseline: Path | None = None
    report: Report | None = None
    seconds: float = 0.0


def _write_line(line: str, stream: TextIO | None) -> None:
    """Print a line without breaking a tqdm progress bar that may be on screen."""
    from tqdm import tqdm

    tqdm.write(line, file=stream or sys.stdout)


def run_comparison(
    preset: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seeds: int = 1,
    only: list[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    data: Any = None,
    data_path: str | None = None,
    baseline: bool = True,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    stream: TextIO | None = None,
    jobs: int = 1,
) -> ComparisonResult:
    """Run every experiment of the suite ``preset`` for ``seeds`` seeds into ``out_dir``, then report.

    Args:
        preset: a suite preset (``"seed"``) or a TOML file; see ``rnnlab.train.load_suite``.
        seeds: runs per experiment, with seeds ``config.seed + k`` for k = 0..seeds-1.
        only: experiment names to run (default: all); the report covers every run in ``out_dir``.
        overrides: ``key=value`` strings (or a mapping) applied to every experiment.
        data: a ``TextDataset`` (encoded here once per distinct vocabulary/length setting) or an
            ``EncodedData`` (used as is; no baseline then), instead of loading ``data_path``.
        data_path: dataset path for every experiment (same as the override ``data=PATH``).
        baseline: also fit the bag-of-words baseline (once per comparison folder).
        jobs: runs trained at once, each in its own worker process (1: one after another, in this
            process). With N > 1 the data is encoded once here, into the cache, before the workers
            start; a config with ``num_threads = 0`` gets ``max(1, cores // min(N, runs))`` torch
            threads per worker. Results equal ``jobs=1``'s bit for bit only with the same thread count
            (GEMM partitioning changes float rounding): set ``num_threads`` to compare exactly.
            Workers' output goes to ``DIR/<name>/seed<k>.worker.log``.
    Raises ReportError (bad folder, unknown name in ``only``, a run made with other settings)
    before anything is written, and DirectoryInUseError when another process writes ``out_dir``.
    """
    start = time.perf_counter()
    out = ComparisonDir(out_dir)
    log = (lambda line: _write_line(line, stream)) if progress else (lambda line: None)
    if not isinstance(seeds, int) or seeds < 1:
        raise ReportError(f"--seeds must be an integer >= 1, got {seeds!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ReportError(f"--jobs must be an integer >= 1 (runs trained at once), got {jobs!r}")
    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    if data_path:
        overrides = (
            {**overrides, "data": str(data_path)} if isinstance(overrides, dict) else [*overrides, f"data={data_path}"]
        )
    configs, names = _suite(preset, overrides, only)
    with out.lock():
        manifest = out.read_manifest()
        plan = plan_comparison(configs, out, seeds)
        invocation = {"preset": str(preset), "seeds": seeds, "only": list(only or []), "baseline": baseline}
        invocation.update(overrides=overrides if isinstance(overrides, dict) else list(overrides), jobs=jobs)
        manifest = _record_invocation(manifest, str(preset), names, invocation)
        out.write_manifest(manifest)
        comparison = _Comparison(out, plan, DataProvider(data, cache_dir=cache_dir, progress=progress), log, start)
        comparison.eta.costs = {c.name: recurrent_cost(c) for c in configs}
        pending = comparison.skip_complete()
        if baseline and configs:  # first: it takes seconds and shows at once where the models must get to
            comparison.result.baseline = comparison.fit_baseline(configs[0])
        log(
            f"compare: {len(plan)} runs ({len(configs)} experiments x {seeds} seed(s)) into {out.path}; "
            f"{len(comparison.result.skipped)} complete already, {len(pending)} to run"
        )
        if jobs > 1 and pending:
            run_parallel(comparison, pending, jobs, cache_dir=cache_dir, progress=progress)
        else:
            comparison.run_in_process(pending, progress=progress)
        return comparison.finish(manifest)


def _suite(
    preset: str | os.PathLike[str], overrides: list[str] | dict[str, Any], only: list[str] | None
) -> tuple[list[Config], list[str]]:
    """The suite's configs (only those named in ``only``, when given) and all its experiment names."""
    configs = load_suite(preset, overrides)
    names = [c.name for c in configs]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ReportError(
                f"unknown experiment(s) in --only: {', '.join(unknown)}; the suite {preset} has: {', '.join(names)}"
            )
        configs = [c for c in configs if c.name in only]
    return configs, names


def _record_invocation(
    manifest: dict[str, Any] | None, preset: str, names: list[str], invocation: dict[str, Any]
) -> dict[str, Any]:
    """The manifest with this invocation added (a new one for a new folder); experiments keep their order."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if manifest is None:
        manifest = {
            "kind": MANIFEST_KIND,
            "format": 1,
            "rnnlab_version": __version__,
            "preset": preset,
            "experiments": names,
            "created": now,
            "invocations": [],
        }
    else:  # keep the order of earlier invocations, add new names at the end
        manifest["experiments"] = list(dict.fromkeys([*manifest.get("experiments", []), *names]))
    manifest["invocations"] = [
        *manifest.get("invocations", []),
        {"started": now, **invocation, "machine": _machine()},
    ]
    return manifest


class _EpochLine(Callback):
    """In-process runs: one line per finished epoch, with the time left."""

    def __init__(self, comparison: _Comparison, run: PlannedRun, later: list[tuple[str, int]]) -> None:
        self.comparison, self.run, self.later = comparison, run, later

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        c, rows, eta = self.run.config, trainer.state.history, self.comparison.eta
        eta.add(c.name, rows, str(self.run.run_dir))
        secs, how = eta.estimate([(c.name, c.epochs - len(rows)), *self.later])
        self.comparison.log(
            f"compare: {c.name} seed {c.seed}: epoch {len(rows)}/{c.epochs} done, "
            f"elapsed {self.comparison.elapsed()}, ~{fmt_duration(secs or 0)} left ({how})"
        )


class _Comparison:
    """The state shared by the steps of one ``run_comparison`` call."""

    def __init__(
        self, out: ComparisonDir, plan: list[PlannedRun], provider: DataProvider, log: Any, start: float
    ) -> None:
        self.out, self.plan, self.provider, self.log, self.start = out, plan, provider, log, start
        self.result = ComparisonResult(out.path, plan)
        self.eta = Eta()

    def elapsed(self) -> str:
        return fmt_duration(time.perf_counter() - self.start)

    def skip_complete(self) -> list[PlannedRun]:
        """Record the complete runs (skipped, their epoch times known); the others, still to run."""
        pending = []
        for run in self.plan:
            if run.state == "complete":
                self.result.skipped.append(run.run_dir)
                self.eta.add(run.config.name, run.rundir.read_metrics(), str(run.run_dir))
            else:
                pending.append(run)
        return pending

    def announce(self, run: PlannedRun, number: int) -> str:
        """``[3/8] gru seed 1 (gru, encoder torch, 5 epochs[, resuming after epoch 2])``."""
        c = run.config
        resuming = f", resuming after epoch {run.done_epochs}" if run.state == "resume" else ""
        return f"[{number}/{len(self.plan)}] {run.label} ({c.cell}, encoder {c.encoder}, {c.epochs} epochs{resuming})"

    def run_in_process(self, pending: list[PlannedRun], *, progress: bool) -> None:
        """Train ``pending`` one after another in this process; a run that fails in training is reported."""
        n_done = len(self.result.skipped)
        for i, run in enumerate(pending):
            secs, how = self.eta.estimate([(r.config.name, r.config.epochs - r.done_epochs) for r in pending[i:]])
            eta_text = f"~{fmt_duration(secs)} left ({how})" if secs is not None else f"time left: unknown ({how})"
            self.log(f"\n{self.announce(run, n_done + i + 1)} -> {run.run_dir}   elapsed {self.elapsed()}, {eta_text}")
            later = [(r.config.name, r.config.epochs - r.done_epochs) for r in pending[i + 1 :]]
            callbacks = [_EpochLine(self, run, later)] if progress else []
            try:
                data = self.provider.encoded(run.config)
                t_call = time.perf_counter()
                rows = train_and_evaluate(
                    run.config,
                    run.run_dir,
                    data=data,
                    resume=run.state == "resume",
                    progress=progress,
                    callbacks=callbacks,
                )
            except KeyboardInterrupt:
                self.log(f"\ncompare: interrupted; run the same command again to resume ({run.run_dir})")
                raise
            except TrainingError as err:  # one failed run (non-finite loss) must not stop the comparison
                self.result.failed.append((run.run_dir, str(err)))
                self.log(f"compare: {run.label} failed: {err} (reported as incomplete; continuing)")
                continue
            self.result.trained.append(run.run_dir)
            self.eta.add(run.config.name, rows, str(run.run_dir))
            self.eta.add_call(time.perf_counter() - t_call, rows[run.done_epochs :])

    def fit_baseline(self, config: Config) -> Path | None:
        """Fit the NBSVM baseline on the first experiment's texts, unless DIR already holds it."""
        rd = RunDir(self.out.path / BASELINE_NAME)
        if rd.is_run() and _status(rd) == "complete":
            self.log(f"\nbaseline: {BASELINE_NAME} complete already ({rd.path})")
            return rd.path
        dataset = self.provider.texts(config)
        if dataset is None:
            self.log("\nbaseline: skipped (an encoded dataset was given, the baseline needs the texts)")
            return None
        from rnnlab.data import Tokenizer

        self.log(
            f"\nbaseline: {BASELINE_NAME} (NB-scaled logistic regression on uni+bigrams), "
            f"{len(dataset.train):,} train / {len(dataset.test):,} test texts ..."
        )
        res = nbsvm(
            dataset.train.texts,
            dataset.train.labels,
            dataset.test.texts,
            dataset.test.labels,
            tokenize=Tokenizer().tokenize,
            seed=config.seed,
        )
        write_baseline_run(
            res,
            rd.path,
            num_train=len(dataset.train),
            num_test=len(dataset.test),
            data=str(data_source(config) or dataset.source),
        )
        self.log(f"baseline: test accuracy {res.test_acc:.4f} ({res.num_features:,} features, {res.seconds:.1f} s)")
        return rd.path

    def finish(self, manifest: dict[str, Any]) -> ComparisonResult:
        """Close the invocation in the manifest, write the report."""
        result = self.result
        manifest["invocations"][-1].update(
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - self.start, 1),
        )
        self.out.write_manifest(manifest)
        result.report = write_report(
            [self.out.path], self.out.path, order=manifest["experiments"], intro=_intro(manifest)
        )
        result.seconds = time.perf_counter() - self.start
        self.log(
            f"\ncompare: done in {fmt_duration(result.seconds)} ({len(result.trained)} runs trained, "
            f"{len(result.skipped)} already complete, {len(result.failed)} failed); "
            f"report: {self.out.path / 'results.md'}"
        )
        return result


def _status(rd: RunDir) -> str | None:
    try:
        return rd.read_info(check_format=False).get("status")
    except RnnlabError:
        return None


def _machine() -> str:
    """One line describing where the comparison ran (CPU, cores, torch, its threads, GPU if any)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"
    )


def _intro(manifest: Mapping[str, Any]) -> str:
    """What produced the comparison, from its manifest's invocations."""
    lines = []
    for inv in manifest.get("invocations", []):
        opts = [f"--preset {inv.get('preset')}", f"--seeds {inv.get('seeds')}"]
        if inv.get("only"):
            opts.append("--only " + ",".join(inv["only"]))
        overrides = inv.get("overrides") or []
        items = overrides.items() if isinstance(overrides, dict) else [tuple(o.split("=", 1)) for o in overrides]
        opts += [f"--set {k}={v}" for k, v in items]
        if not inv.get("baseline", True):
            opts.append("--no-baseline")
        if inv.get("jobs", 1) > 1:
            opts.append(f"--jobs {inv['jobs']}")
        state = (
            f"finished {inv['finished']} ({fmt_duration(inv.get('seconds', 0))})"
            if inv.get("finished")
            else "did not finish"
        )
        lines.append(
            f"- `rnnlab compare {' '.join(opts)}`: started {inv.get('started')}, {state}; "
            f"{inv.get('machine', 'machine not recorded')}"
        )
    return "Produced by:\n\n" + "\n".join(lines) + "\n" if lines else ""
