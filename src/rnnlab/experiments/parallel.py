"""``rnnlab compare --jobs N``: the pending runs of a comparison trained in the worker pool, with progress lines.

The data is encoded here, once per setting, into the encoded cache, so that the workers read it
from there instead of all tokenising the corpus at once; the runs start longest first (LPT), so
that a long run does not start last and leave a slot idle; each event (a run started, an epoch
done, a run finished or failed) is one line with the ETA of a greedy schedule on the N slots.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from rnnlab.experiments.eta import fmt_duration, work_estimate
from rnnlab.experiments.plan import PlannedRun
from rnnlab.experiments.pool import Job, available_cores, run_jobs, worker_threads
from rnnlab.experiments.provider import data_keys
from rnnlab.rundir import ComparisonDir


def run_parallel(
    comparison: Any, pending: list[PlannedRun], jobs: int, *, cache_dir: str | os.PathLike | None, progress: bool
) -> None:
    """Train ``pending`` in up to ``jobs`` worker processes; fills ``comparison.result`` (in plan order).

    ``comparison``: the ``rnnlab.experiments.compare`` state (``provider``, ``eta``, ``result``,
    ``log``, ``announce``, ``elapsed``).
    """
    slots = min(jobs, len(pending))
    cores = available_cores()
    _encode_once(comparison, pending)
    given = comparison.provider.given
    comparison.provider.forget()  # the workers hold their own copies
    board = _Board(
        comparison, pending, slots, {id(r): worker_threads(r.config.num_threads, slots, cores) for r in pending}
    )
    comparison.log(
        f"compare: {len(pending)} runs on {slots} worker processes at a time ({cores} cores; torch threads per "
        f"worker: {', '.join(sorted({str(t) for t in board.threads.values()}))}); worker output: "
        f"{pending[0].run_dir.parent.parent / '<experiment>' / 'seed<k>.worker.log'}"
    )
    with tempfile.TemporaryDirectory(prefix="rnnlab-compare-") as tmp:
        data_file = None
        if given is not None:  # the caller's dataset, handed over once through a file
            data_file = Path(tmp) / "data.pkl"
            with open(data_file, "wb") as fh:
                pickle.dump(given, fh, protocol=pickle.HIGHEST_PROTOCOL)
        job_list = [
            Job(run, _spec(run, board.threads[id(run)], data_file, cache_dir), run.label, run.done_epochs)
            for run in board.start_order
        ]
        try:
            run_jobs(
                job_list,
                slots,
                Path(tmp),
                on_start=board.on_start,
                on_epoch=board.on_epoch if progress else lambda job, rows: None,
                on_end=board.on_end,
                log=comparison.log,
            )
        except KeyboardInterrupt:
            comparison.log(
                "\ncompare: interrupted; the workers were stopped (completed epochs kept); run the same command "
                "again to resume"
            )
            raise
    rank = {r.run_dir: i for i, r in enumerate(pending)}  # report in plan order, as --jobs 1 does
    comparison.result.trained.sort(key=lambda p: rank[p])
    comparison.result.failed.sort(key=lambda f: rank[f[0]])


def _encode_once(comparison: Any, pending: list[PlannedRun]) -> None:
    """Encode each distinct data setting of ``pending`` into the cache (the workers read it from there)."""
    if comparison.provider.given_encoded:
        return
    settings: dict[tuple, Any] = {}
    for run in pending:
        settings.setdefault(data_keys(run.config), run.config)
    for c in settings.values():
        t0 = time.perf_counter()
        enc = comparison.provider.encoded(c)
        comparison.log(
            f"compare: data for max_words={c.max_words}, max_len={c.max_len}, truncate={c.truncate}: "
            f"{'read from' if enc.from_cache else 'encoded into'} the cache in {time.perf_counter() - t0:.1f} s"
        )


def _spec(run: PlannedRun, threads: int, data_file: Path | None, cache_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What the worker of ``run`` needs (see ``rnnlab.experiments.worker.worker_main``)."""
    log_file = ComparisonDir.worker_log(run.rundir)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    return {
        "config": run.config.to_dict(),
        "run_dir": str(run.run_dir),
        "resume": run.state == "resume",
        "threads": None if run.config.num_threads else threads,
        "log": str(log_file),
        "data_file": None if data_file is None else str(data_file),
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }


class _Board:
    """The runs on the slots and in the queue, and the progress lines of their events."""

    def __init__(self, comparison: Any, pending: list[PlannedRun], slots: int, threads: dict[int, int]) -> None:
        self.comparison, self.pending, self.slots, self.threads = comparison, pending, slots, threads
        n_done = len(comparison.result.skipped)
        self.order = {id(r): n_done + i + 1 for i, r in enumerate(pending)}
        # Longest first (LPT), so that a long run does not start last and leave a slot idle.
        self.start_order = sorted(pending, key=lambda r: -work_estimate(r.config, r.done_epochs))
        self.state: dict[int, int] = {}  # id(run) -> epochs done, for the runs on a slot
        self.waiting = {id(r) for r in pending}  # not started yet

    def left(self) -> str:
        on_slot = [(r.config.name, r.config.epochs - self.state[id(r)]) for r in self.pending if id(r) in self.state]
        queued = [
            (r.config.name, r.config.epochs - r.done_epochs)
            for r in self.start_order
            if id(r) not in self.state and id(r) in self.waiting
        ]
        secs, how = self.comparison.eta.schedule(on_slot, queued, self.slots)
        when = f"~{fmt_duration(secs)} left" if secs is not None else "time left: unknown"
        return f"elapsed {self.comparison.elapsed()}, {when} ({how})"

    def now_running(self) -> str:
        runs = [r for r in self.pending if id(r) in self.state]
        return (
            "; ".join(
                f"{r.label} epoch {self.state[id(r)] + 1}/{r.config.epochs}"
                if self.state[id(r)] < r.config.epochs
                else f"{r.label} finishing"
                for r in runs
            )
            or "none"
        )

    def on_start(self, job: Job) -> None:
        run = job.key
        self.waiting.discard(id(run))
        self.state[id(run)] = run.done_epochs
        self.comparison.log(
            f"\n{self.comparison.announce(run, self.order[id(run)])} -> {run.run_dir}  "
            f"[worker {job.slot}/{self.slots}, {self.threads[id(run)]} thread(s)]  {self.left()}"
        )

    def on_epoch(self, job: Job, rows: list[dict[str, Any]]) -> None:
        run = job.key
        self.state[id(run)] = len(rows)
        self.comparison.eta.add(run.config.name, rows, str(run.run_dir))
        if len(rows) > run.done_epochs:
            self.comparison.log(
                f"compare: {run.label}: epoch {len(rows)}/{run.config.epochs} done; running: {self.now_running()}; "
                f"{self.left()}"
            )

    def on_end(self, job: Job, message: dict[str, Any], wall: float) -> None:
        run, result = job.key, self.comparison.result
        self.state.pop(id(run), None)
        if message.get("status") == "ok":
            rows = message["rows"]
            result.trained.append(run.run_dir)
            self.comparison.eta.add(run.config.name, rows, str(run.run_dir))
            self.comparison.eta.add_call(wall, rows[run.done_epochs :])
            self.comparison.log(
                f"compare: {run.label} finished in {fmt_duration(wall)} (final {_final_acc(rows)}); {self.left()}"
            )
        else:
            why = message.get("error", "unknown error")
            result.failed.append((run.run_dir, why))
            self.comparison.log(
                f"compare: {run.label} failed: {why} (reported as incomplete; continuing; log: {job.spec['log']})"
            )


def _final_acc(rows: list[dict[str, Any]]) -> str:
    """``test_acc 0.8123`` of the last row (``val_acc`` when the run tests once, at the end)."""
    last = rows[-1] if rows else {}
    key = "test_acc" if "test_acc" in last else "val_acc"
    return f"{key} {last[key]:.4f}" if isinstance(last.get(key), (int, float)) else "no accuracy"
