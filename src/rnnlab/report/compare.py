"""``rnnlab compare``: run a suite of experiments x seeds into one folder, then report on it.

Layout of a comparison folder ``DIR``::

    DIR/compare.json            manifest: marks DIR as a comparison, lists the suite's experiments
    DIR/<name>/seed<k>/         one run directory per experiment and seed (seed = config.seed + k)
    DIR/nbsvm_bigram/           the bag-of-words baseline, as a one-epoch run directory
    DIR/results.md, results.csv, *.png

Running the same command again skips complete runs and resumes incomplete ones, so an
interrupted comparison continues where it stopped. ``--jobs N`` trains up to N runs at once in
worker processes (``rnnlab.report._jobs``; their output in ``DIR/<name>/seed<k>.worker.log``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from rnnlab import __version__
from rnnlab._io import write_json
from rnnlab.report.baseline import BASELINE_NAME, nbsvm, write_baseline_run
from rnnlab.report.build import Report, write_report
from rnnlab.report.runs import ReportError, read_metrics_rows
from rnnlab.train import Config, TrainingError, load_suite, train_and_evaluate
from rnnlab.train.config import config_from_toml
from rnnlab.train.dataset import data_source, load_key, load_texts
from rnnlab.train.runner import RESUME_MUTABLE

MANIFEST = "compare.json"
MANIFEST_KIND = "rnnlab-compare"

#: Config keys that may differ between a finished run and the planned one for it to be reused.
_REUSE_IGNORES = set(RESUME_MUTABLE) - {"epochs", "name"}


@dataclass
class PlannedRun:
    config: Config
    run_dir: Path
    k: int
    state: str  # "new" | "resume" | "complete"
    done_epochs: int = 0


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


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


# ----------------------------------------------------------------------------- the folder


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of an existing comparison, None for a missing or empty folder; refuses anything else."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; expected a folder for the comparison")
    if not out.exists() or not any(out.iterdir()):
        return None
    path = out / MANIFEST
    if not path.is_file():
        raise ReportError(
            f"--out {out} is not empty and is not an rnnlab comparison (no {MANIFEST}); "
            "refusing to write into it: choose a new or empty folder"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"{path} is not readable JSON ({err}); refusing to write into {out}") from None
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind != MANIFEST_KIND:
        raise ReportError(
            f"{path} is not an rnnlab comparison manifest (kind {kind!r}, expected "
            f"{MANIFEST_KIND!r}); refusing to write into {out}"
        )
    return manifest


def _plan_run(config: Config, run_dir: Path, k: int) -> PlannedRun:
    """Decide whether a run is new, to resume, or complete (and reusable with this config)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return PlannedRun(config, run_dir, k, "new")
    if not (run_dir / "run.json").is_file() or not (run_dir / "config.toml").is_file():
        raise ReportError(
            f"{run_dir} exists but is not a run directory (no run.json/config.toml); "
            "move it away or choose another --out"
        )
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        old = config_from_toml(run_dir / "config.toml")
    except Exception as err:  # noqa: BLE001 - any unreadable run is the same user-facing error
        raise ReportError(
            f"{run_dir}: unreadable run ({type(err).__name__}: {err}); move it away or choose another --out"
        ) from None
    diffs = [
        f"{f}: run has {getattr(old, f)!r}, now {getattr(config, f)!r}"
        for f in old.to_dict()
        if f not in _REUSE_IGNORES and getattr(old, f) != getattr(config, f)
    ]
    rows, _ = read_metrics_rows(run_dir / "metrics.jsonl")
    if len(rows) > config.epochs:
        raise ReportError(
            f"{run_dir} has {len(rows)} epochs done, more than the {config.epochs} asked for; "
            "use another --out for fewer epochs"
        )
    if info.get("status") == "complete" and not diffs:
        return PlannedRun(config, run_dir, k, "complete", len(rows))
    if any(not d.startswith("epochs:") for d in diffs):  # more epochs than before: resume extends the run
        raise ReportError(
            f"{run_dir} was run with another config ({'; '.join(diffs)}); a comparison keeps "
            "its settings: use another --out to compare new settings"
        )
    return PlannedRun(config, run_dir, k, "resume", len(rows))


def plan_comparison(configs: list[Config], out: Path, seeds: int) -> list[PlannedRun]:
    """Every (experiment, seed) run and its state; raises before anything runs if one is unusable."""
    return [_plan_run(c.replace(seed=c.seed + k), out / c.name / f"seed{k}", k) for c in configs for k in range(seeds)]


# ----------------------------------------------------------------------------- data


def _data_keys(config: Config) -> tuple[tuple, tuple]:
    """(what loading depends on, what encoding adds): runs sharing both share one encoded dataset."""
    return load_key(config), (config.max_words, config.min_freq, config.max_len, config.truncate)


class _DataProvider:
    """Loads each distinct dataset once and encodes each distinct setting once (the last one is kept)."""

    def __init__(self, data: Any, *, cache_dir: str | os.PathLike | None, progress: bool) -> None:
        from rnnlab.data import EncodedData

        self.given = data
        self.given_encoded = isinstance(data, EncodedData)
        self.cache_dir = cache_dir
        self.progress = progress
        self._texts: dict[tuple, Any] = {}
        self._encoded: tuple[tuple, Any] | None = None

    def texts(self, config: Config) -> Any:
        """The TextDataset for this config (None when an encoded dataset was given)."""
        if self.given is not None:
            return None if self.given_encoded else self.given
        key, _ = _data_keys(config)
        if key not in self._texts:
            self._texts.clear()  # one raw dataset in memory at a time
            self._texts[key] = load_texts(config, progress=self.progress)
        return self._texts[key]

    def encoded(self, config: Config) -> Any:
        if self.given_encoded:
            return self.given
        from rnnlab.data import encode_dataset

        key = _data_keys(config) if self.given is None else (None, _data_keys(config)[1])
        if self._encoded is None or self._encoded[0] != key:
            dataset = self.texts(config)
            enc = encode_dataset(
                dataset,
                max_words=config.max_words,
                min_freq=config.min_freq,
                max_len=config.max_len,
                truncate=config.truncate,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
            self._encoded = (key, enc)
        return self._encoded[1]


# ----------------------------------------------------------------------------- progress


def recurrent_cost(config: Config) -> float:
    """Multiply-adds per token of the recurrent layers: sum over layers and directions of G H (H_in + H).

    G = 1 (RNN), 3 (GRU), 4 (LSTM); H_in = embedding_dim for the first layer, else H times the
    number of directions.
    """
    gates = {"rnn": 1, "gru": 3, "lstm": 4}.get(config.cell, 4)
    dirs = 2 if config.bidirectional else 1
    h = config.hidden_size
    total = 0.0
    for layer in range(config.num_layers):
        h_in = config.embedding_dim if layer == 0 else h * dirs
        total += dirs * gates * h * (h_in + h)
    return total


class _Eta:
    """Estimates the time left from measured epoch times.

    An experiment's remaining epochs are costed at the median of its own measured seconds per
    epoch (over all its runs). An experiment not measured yet is costed from the measured ones,
    each scaled by sqrt(cost ratio) with cost = the recurrent multiply-adds per token
    (:func:`recurrent_cost`), averaged; sqrt because fixed costs (embedding, head, data,
    per-step overhead) do not grow with the cell (on the seed suite, 1 epoch each, within 30%, where
    a plain average missed the 128-wide LSTM by 3x). So the estimate is rough until every
    experiment has run one epoch.
    """

    def __init__(self, costs: Mapping[str, float] | None = None) -> None:
        self.costs = dict(costs or {})  # experiment -> recurrent_cost of its config
        self.seconds: dict[str, dict[str, list[float]]] = {}  # experiment -> run -> epoch seconds
        self.wall = 0.0  # wall-clock seconds of the finished train_and_evaluate calls
        self.trained = 0.0  # the epoch_seconds (training passes only) of those calls

    def add_call(self, wall: float, rows_trained: Iterable[Mapping[str, Any]]) -> None:
        """Record a finished call: the ratio wall / training time covers evaluation and set-up."""
        self.wall += wall
        self.trained += sum(float(r.get("epoch_seconds") or 0.0) for r in rows_trained)

    def add(self, name: str, rows: Iterable[Mapping[str, Any]], run: str = "") -> None:
        """Record (or replace) the epoch times of one run of experiment ``name``."""
        vals = [float(r["epoch_seconds"]) for r in rows if isinstance(r.get("epoch_seconds"), (int, float))]
        if vals:
            self.seconds.setdefault(name, {})[run] = vals

    def _guess(self, name: str, medians: Mapping[str, float]) -> float:
        """Seconds per epoch of an unmeasured experiment (see the class docstring)."""
        if name in self.costs and all(m in self.costs for m in medians):
            return statistics.fmean(v * math.sqrt(self.costs[name] / self.costs[m]) for m, v in medians.items())
        return statistics.fmean(medians.values())

    def _rates(self, names: set[str]) -> tuple[dict[str, float], str]:
        """Estimated wall seconds per epoch of each of ``names`` (set-up factor included), and how."""
        per_name = {n: [x for v in runs.values() for x in v] for n, runs in self.seconds.items()}
        medians = {n: statistics.median(v) for n, v in per_name.items()}
        guessed = {n for n in names if n not in medians}
        rates = {n: medians[n] if n in medians else self._guess(n, medians) for n in names}
        how = f"from {sum(len(v) for v in per_name.values())} measured epochs"
        if self.trained > 0 and self.wall > self.trained:
            factor = self.wall / self.trained
            rates = {n: v * factor for n, v in rates.items()}
            how += f", x{factor:.2f} for evaluation and set-up"
        else:
            how += ", training passes only"
        if guessed:
            scaled = all(n in self.costs for n in guessed) and all(n in self.costs for n in medians)
            how += f"; {len(guessed)} experiment(s) not measured yet, " + (
                "scaled from the measured ones by model size" if scaled else "assumed at the average speed"
            )
        return rates, how

    def estimate(self, pending: list[tuple[str, int]]) -> tuple[float | None, str]:
        """Seconds left for ``pending`` (experiment name, epochs to run), and how it was estimated."""
        if not any(e > 0 for _, e in pending):
            return 0.0, "nothing left"
        if not self.seconds:
            return None, "no epoch measured yet"
        rates, how = self._rates({n for n, e in pending if e > 0})
        return sum(e * rates[n] for n, e in pending if e > 0), how

    def schedule(
        self, running: list[tuple[str, int]], queued: list[tuple[str, int]], slots: int
    ) -> tuple[float | None, str]:
        """Seconds left when ``slots`` runs go at once: runs on a slot (name, epochs left) finish their
        epochs, queued runs start in order on the first slot to free up (list scheduling)."""
        if not any(e > 0 for _, e in [*running, *queued]):
            return 0.0, "nothing left"
        if not self.seconds:
            return None, "no epoch measured yet"
        rates, how = self._rates({n for n, e in [*running, *queued] if e > 0})
        from rnnlab.report._jobs import greedy_finish

        secs = greedy_finish(
            [e * rates[n] for n, e in running if e > 0], [e * rates[n] for n, e in queued if e > 0], slots
        )
        return secs, f"{slots} runs at a time, {how}"


class _EpochWatcher:
    """Polls a run's ``metrics.jsonl`` from a thread and reports each newly finished epoch.

    Training runs in the main thread; this only reads the file (written atomically by
    ``rnnlab.train``), so it cannot disturb the run.
    """

    def __init__(self, path: Path, on_rows, interval: float = 1.0) -> None:
        import threading

        self.path, self.on_rows, self.interval = path, on_rows, interval
        self.seen = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rnnlab-compare-eta", daemon=True)

    def __enter__(self) -> _EpochWatcher:
        if self.path.is_file():
            self.seen = len(read_metrics_rows(self.path)[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rows, _ = read_metrics_rows(self.path)
            except OSError:
                continue
            if self.seen >= 0 and len(rows) > self.seen:
                self.on_rows(rows)
            self.seen = len(rows)


def _write_line(line: str, stream: TextIO | None) -> None:
    """Print a line without breaking a tqdm progress bar that may be on screen."""
    try:
        from tqdm import tqdm

        tqdm.write(line, file=stream or sys.stdout)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(line, file=stream or sys.stdout, flush=True)


# ----------------------------------------------------------------------------- the comparison


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
    before anything is written.
    """
    start = time.perf_counter()
    out = Path(out_dir)
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
    configs = load_suite(preset, overrides)
    names = [c.name for c in configs]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ReportError(
                f"unknown experiment(s) in --only: {', '.join(unknown)}; the suite {preset} has: {', '.join(names)}"
            )
        configs = [c for c in configs if c.name in only]
    manifest = _read_manifest(out)
    plan = plan_comparison(configs, out, seeds)

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if manifest is None:
        manifest = {
            "kind": MANIFEST_KIND,
            "format": 1,
            "rnnlab_version": __version__,
            "preset": str(preset),
            "experiments": names,
            "created": now,
            "invocations": [],
        }
    else:  # keep the order of earlier invocations, add new names at the end
        manifest["experiments"] = list(dict.fromkeys([*manifest.get("experiments", []), *names]))
    manifest["invocations"] = [
        *manifest.get("invocations", []),
        {
            "started": now,
            "preset": str(preset),
            "seeds": seeds,
            "only": list(only or []),
            "overrides": overrides if isinstance(overrides, dict) else list(overrides),
            "baseline": baseline,
            "jobs": jobs,
            "machine": _machine(),
        },
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, manifest)

    result = ComparisonResult(out, plan)
    provider = _DataProvider(data, cache_dir=cache_dir, progress=progress)
    eta = _Eta({c.name: recurrent_cost(c) for c in configs})
    pending = []
    for run in plan:
        if run.state == "complete":
            result.skipped.append(run.run_dir)
            eta.add(run.config.name, read_metrics_rows(run.run_dir / "metrics.jsonl")[0], str(run.run_dir))
        else:
            pending.append(run)
    n_done = len(result.skipped)
    if baseline and configs:  # first: it takes seconds and shows at once where the models must get to
        result.baseline = _run_baseline(configs[0], provider, out, log)
    log(
        f"compare: {len(plan)} runs ({len(configs)} experiments x {seeds} seed(s)) into {out}; "
        f"{n_done} complete already, {len(pending)} to run"
    )

    if jobs > 1 and pending:
        _run_parallel(
            pending,
            jobs,
            provider,
            eta,
            result,
            log,
            start=start,
            n_done=n_done,
            total=len(plan),
            cache_dir=cache_dir,
            progress=progress,
        )
        pending = []
    for i, run in enumerate(pending):
        left = [(r.config.name, r.config.epochs - r.done_epochs) for r in pending[i:]]
        secs, how = eta.estimate(left)
        elapsed = time.perf_counter() - start
        eta_text = f"~{_fmt_duration(secs)} left ({how})" if secs is not None else f"time left: unknown ({how})"
        c = run.config
        log(
            f"\n[{n_done + i + 1}/{len(plan)}] {c.name} seed {c.seed} ({c.cell}, impl {c.impl}, "
            f"{c.epochs} epochs{', resuming after epoch ' + str(run.done_epochs) if run.state == 'resume' else ''})"
            f" -> {run.run_dir}   elapsed {_fmt_duration(elapsed)}, {eta_text}"
        )
        later = [(r.config.name, r.config.epochs - r.done_epochs) for r in pending[i + 1 :]]

        def on_epoch(rows: list[dict[str, Any]], c: Config = c, key: str = str(run.run_dir), later=later) -> None:
            eta.add(c.name, rows, key)
            secs, how = eta.estimate([(c.name, c.epochs - len(rows)), *later])
            log(
                f"compare: {c.name} seed {c.seed}: epoch {len(rows)}/{c.epochs} done, "
                f"elapsed {_fmt_duration(time.perf_counter() - start)}, ~{_fmt_duration(secs or 0)} left ({how})"
            )

        try:
            data_c = provider.encoded(c)
            t_call = time.perf_counter()
            with _EpochWatcher(run.run_dir / "metrics.jsonl", on_epoch) if progress else nullcontext():
                rows = train_and_evaluate(c, run.run_dir, data=data_c, resume=run.state == "resume", progress=progress)
        except KeyboardInterrupt:
            log(f"\ncompare: interrupted; run the same command again to resume ({run.run_dir})")
            raise
        except TrainingError as err:  # one failed run (non-finite loss) must not stop the comparison
            result.failed.append((run.run_dir, str(err)))
            log(f"compare: {c.name} seed {c.seed} failed: {err} (reported as incomplete; continuing)")
            continue
        result.trained.append(run.run_dir)
        eta.add(c.name, rows, str(run.run_dir))
        eta.add_call(time.perf_counter() - t_call, rows[run.done_epochs :])

    manifest["invocations"][-1].update(
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=round(time.perf_counter() - start, 1)
    )
    write_json(out / MANIFEST, manifest)
    result.report = write_report([out], out, order=manifest["experiments"], intro=_intro(manifest))
    result.seconds = time.perf_counter() - start
    log(
        f"\ncompare: done in {_fmt_duration(result.seconds)} ({len(result.trained)} runs trained, "
        f"{len(result.skipped)} already complete, {len(result.failed)} failed); "
        f"report: {out / 'results.md'}"
    )
    return result


def _run_parallel(
    pending: list[PlannedRun],
    jobs: int,
    provider: _DataProvider,
    eta: _Eta,
    result: ComparisonResult,
    log,
    *,
    start: float,
    n_done: int,
    total: int,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> None:
    """Train ``pending`` in up to ``jobs`` worker processes (see ``rnnlab.report._jobs``); fills ``result``."""
    from rnnlab.report import _jobs

    slots = min(jobs, len(pending))
    cores = _jobs.available_cores()
    # Encode each data setting once, here, so that the workers read it from the cache instead of
    # all tokenising the corpus at the same time.
    settings: dict[tuple, Config] = {}
    for run in pending:
        settings.setdefault(_data_keys(run.config), run.config)
    if not provider.given_encoded:
        for c in settings.values():
            t0 = time.perf_counter()
            enc = provider.encoded(c)
            log(
                f"compare: data for max_words={c.max_words}, max_len={c.max_len}, truncate={c.truncate}: "
                f"{'read from' if enc.from_cache else 'encoded into'} the cache in {time.perf_counter() - t0:.1f} s"
            )
    given = provider.given
    provider._encoded, provider._texts = None, {}  # the workers hold their own copies
    threads = {id(r): _jobs.worker_threads(r.config.num_threads, slots, cores) for r in pending}
    log(
        f"compare: {len(pending)} runs on {slots} worker processes at a time ({cores} cores; torch threads per "
        f"worker: {', '.join(sorted({str(t) for t in threads.values()}))}); worker output: "
        f"{pending[0].run_dir.parent.parent / '<experiment>' / 'seed<k>.worker.log'}"
    )

    order = {id(r): n_done + i + 1 for i, r in enumerate(pending)}
    # Longest first (LPT), so that a long run does not start last and leave a slot idle.
    start_order = sorted(pending, key=lambda r: -_work_estimate(r))
    state: dict[int, int] = {}  # id(run) -> epochs done, for the runs on a slot
    waiting = {id(r) for r in pending}  # not started yet

    def label(run: PlannedRun) -> str:
        return f"{run.config.name} seed {run.config.seed}"

    def left() -> str:
        on_slot = [(r.config.name, r.config.epochs - state[id(r)]) for r in pending if id(r) in state]
        queued = [
            (r.config.name, r.config.epochs - r.done_epochs)
            for r in start_order
            if id(r) not in state and id(r) in waiting
        ]
        secs, how = eta.schedule(on_slot, queued, slots)
        when = f"~{_fmt_duration(secs)} left" if secs is not None else "time left: unknown"
        return f"elapsed {_fmt_duration(time.perf_counter() - start)}, {when} ({how})"

    def now_running() -> str:
        runs = [r for r in pending if id(r) in state]
        return (
            "; ".join(
                f"{label(r)} epoch {state[id(r)] + 1}/{r.config.epochs}"
                if state[id(r)] < r.config.epochs
                else f"{label(r)} finishing"
                for r in runs
            )
            or "none"
        )

    def on_start(job: _jobs.Job) -> None:
        run = job.key
        waiting.discard(id(run))
        state[id(run)] = run.done_epochs
        c = run.config
        resuming = f", resuming after epoch {run.done_epochs}" if run.state == "resume" else ""
        log(
            f"\n[{order[id(run)]}/{total}] {label(run)} ({c.cell}, impl {c.impl}, {c.epochs} epochs{resuming}) -> "
            f"{run.run_dir}  [worker {job.slot}/{slots}, {threads[id(run)]} thread(s)]  {left()}"
        )

    def on_epoch(job: _jobs.Job, rows: list[dict[str, Any]]) -> None:
        run = job.key
        state[id(run)] = len(rows)
        eta.add(run.config.name, rows, str(run.run_dir))
        if len(rows) > run.done_epochs:
            log(
                f"compare: {label(run)}: epoch {len(rows)}/{run.config.epochs} done; running: {now_running()}; {left()}"
            )

    def on_end(job: _jobs.Job, message: dict[str, Any], wall: float) -> None:
        run = job.key
        state.pop(id(run), None)
        if message.get("status") == "ok":
            rows = message["rows"]
            result.trained.append(run.run_dir)
            eta.add(run.config.name, rows, str(run.run_dir))
            eta.add_call(wall, rows[run.done_epochs :])
            log(f"compare: {label(run)} finished in {_fmt_duration(wall)} (final {_final_acc(rows)}); {left()}")
        else:
            why = message.get("error", "unknown error")
            result.failed.append((run.run_dir, why))
            log(f"compare: {label(run)} failed: {why} (reported as incomplete; continuing; log: {job.spec['log']})")

    import pickle
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rnnlab-compare-") as tmp:
        data_file = None
        if given is not None:  # the caller's dataset, handed over once through a file
            data_file = Path(tmp) / "data.pkl"
            with open(data_file, "wb") as fh:
                pickle.dump(given, fh, protocol=pickle.HIGHEST_PROTOCOL)
        job_list = []
        for run in start_order:
            log_file = _jobs.log_path(run.run_dir)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            spec = {
                "config": run.config.to_dict(),
                "run_dir": str(run.run_dir),
                "resume": run.state == "resume",
                "threads": None if run.config.num_threads else threads[id(run)],
                "log": str(log_file),
                "data_file": None if data_file is None else str(data_file),
                "cache_dir": None if cache_dir is None else str(cache_dir),
            }
            job_list.append(_jobs.Job(run, spec, label(run), run.done_epochs))
        try:
            _jobs.run_jobs(
                job_list,
                slots,
                Path(tmp),
                on_start=on_start,
                on_epoch=on_epoch if progress else _no_epoch,
                on_end=on_end,
                log=log,
                read_rows=lambda p: read_metrics_rows(p)[0],
            )
        except KeyboardInterrupt:
            log(
                "\ncompare: interrupted; the workers were stopped (completed epochs kept); run the same command "
                "again to resume"
            )
            raise
    rank = {r.run_dir: i for i, r in enumerate(pending)}  # report in plan order, as --jobs 1 does
    result.trained.sort(key=lambda p: rank[p])
    result.failed.sort(key=lambda f: rank[f[0]])


def _work_estimate(run: PlannedRun) -> float:
    """Relative work left in a run, for the start order of ``--jobs``: recurrent multiply-adds per
    token x tokens per example (max_len) x epochs left (same train split size for every run)."""
    c = run.config
    return recurrent_cost(c) * c.max_len * max(0, c.epochs - run.done_epochs)


def _no_epoch(job: Any, rows: list[dict[str, Any]]) -> None:
    return None


def _final_acc(rows: list[dict[str, Any]]) -> str:
    """``test_acc 0.8123`` of the last row (``val_acc`` when the run tests once, at the end)."""
    last = rows[-1] if rows else {}
    key = "test_acc" if "test_acc" in last else "val_acc"
    return f"{key} {last[key]:.4f}" if isinstance(last.get(key), (int, float)) else "no accuracy"


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
            f"finished {inv['finished']} ({_fmt_duration(inv.get('seconds', 0))})"
            if inv.get("finished")
            else "did not finish"
        )
        lines.append(
            f"- `rnnlab compare {' '.join(opts)}`: started {inv.get('started')}, {state}; "
            f"{inv.get('machine', 'machine not recorded')}"
        )
    return "Produced by:\n\n" + "\n".join(lines) + "\n" if lines else ""


def _run_baseline(config: Config, provider: _DataProvider, out: Path, log) -> Path | None:
    """Fit the NBSVM baseline on the first experiment's texts, unless DIR already holds it."""
    run_dir = out / BASELINE_NAME
    if (run_dir / "run.json").is_file():
        try:
            if json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("status") == "complete":
                log(f"\nbaseline: {BASELINE_NAME} complete already ({run_dir})")
                return run_dir
        except (OSError, ValueError):
            pass
    dataset = provider.texts(config)
    if dataset is None:
        log("\nbaseline: skipped (an encoded dataset was given, the baseline needs the texts)")
        return None
    from rnnlab.data import Tokenizer

    log(
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
        run_dir,
        num_train=len(dataset.train),
        num_test=len(dataset.test),
        data=str(data_source(config) or dataset.source),
    )
    log(f"baseline: test accuracy {res.test_acc:.4f} ({res.num_features:,} features, {res.seconds:.1f} s)")
    return run_dir
