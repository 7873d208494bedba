"""``rnnlab compare --jobs N``, the parent side: up to N runs at once, one fresh worker process each.

The comparison encodes each data setting once into the encoded-dataset cache, then this pool
starts workers (``python -m rnnlab.experiments.worker SPEC``, :mod:`rnnlab.experiments.worker`)
that load the data from that cache and call ``train_and_evaluate`` with progress off. A worker
is a fresh interpreter (the same isolation as multiprocessing's "spawn", safe with torch's
thread pools) and, unlike "spawn", never re-imports the caller's ``__main__`` (``python -m
rnnlab`` and unguarded scripts would otherwise run again in every worker). Its stdout and
stderr, from the first byte, go to ``DIR/<name>/seed<k>.worker.log`` beside its run directory
(``ComparisonDir.worker_log``). Only the parent prints: it polls each running run's
``metrics.jsonl`` (through ``RunDir.read_metrics``) for finished epochs, so lines never interleave.

Threads: a config with ``num_threads = 0`` gets ``max(1, cores // slots)`` torch threads in
its worker (``slots = min(N, runs to train)``), set before torch is imported; an explicit
``num_threads`` is used as is, as with ``--jobs 1``. Results are bit-identical to ``--jobs 1``
only when the thread count is the same (GEMM partitioning can change float rounding).

A worker that raises, hits a non-finite loss or is killed is reported as failed; the others
continue. Ctrl-C in the parent (workers run in their own session, so the terminal's SIGINT
reaches the parent only) sends SIGTERM to the workers, which stop like an interrupted
``rnnlab train`` (completed epochs kept, run.json marked, the same command resumes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab.errors import RnnlabError
from rnnlab.rundir import RunDir

#: Seconds between polls of the workers and of the running runs' metrics.jsonl.
POLL_SECONDS = 0.25
#: Seconds a worker gets to stop after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_threads(num_threads: int, slots: int, cores: int | None = None) -> int:
    """Torch threads of one worker: ``num_threads`` when set (> 0), else ``max(1, cores // slots)``."""
    if num_threads > 0:
        return num_threads
    return max(1, (cores or available_cores()) // max(1, slots))


@dataclass
class Job:
    """One run to train in a worker."""

    key: Any  # the caller's handle (a PlannedRun)
    spec: dict[str, Any]
    label: str  # "name seed s"
    done_epochs: int
    process: subprocess.Popen | None = None
    slot: int = 0
    started: float = 0.0
    seen_epochs: int = -1
    run_dir: RunDir = field(default_factory=lambda: RunDir("."))


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker killed by {name}"
    return f"worker exited with code {code} without a result"


def _result(job: Job) -> dict[str, Any]:
    """The worker's result file, or a failure naming how the worker ended."""
    path = Path(job.spec["result"])
    try:
        message = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(message, dict) and "status" in message:
            return message
    except (OSError, ValueError):
        pass
    return {"status": "failed", "error": f"{_exit_reason(job.process.returncode)}; see {job.spec['log']}"}


def run_jobs(
    jobs: list[Job],
    slots: int,
    workdir: Path,
    *,
    on_start: Callable[[Job], None],
    on_epoch: Callable[[Job, list[dict[str, Any]]], None],
    on_end: Callable[[Job, dict[str, Any], float], None],
    log: Callable[[str], None],
) -> None:
    """Run ``jobs`` in order, at most ``slots`` at a time, each in a fresh worker process.

    ``workdir`` holds the spec and result files. Callbacks run in this (the calling) thread
    only: ``on_start(job)``; ``on_epoch(job, rows)`` when the run's metrics.jsonl has grown;
    ``on_end(job, message, wall_seconds)`` with the worker's result, or ``{"status": "failed",
    "error": ...}`` for a worker that died without one. Ctrl-C (KeyboardInterrupt) or any
    error here: every running worker gets SIGTERM (SIGKILL after ``STOP_GRACE_SECONDS``), and
    the exception is re-raised.
    """
    queue = list(jobs)
    running: list[Job] = []
    free = list(range(slots, 0, -1))
    try:
        while queue or running:
            while queue and free:
                job = queue.pop(0)
                job.slot = free.pop()
                _launch(job, len(jobs) - len(queue), workdir, on_start)
                running.append(job)
            time.sleep(POLL_SECONDS)
            for job in list(running):
                if job.process.poll() is None:
                    _poll_epochs(job, on_epoch)
                    continue
                _poll_epochs(job, on_epoch)
                running.remove(job)
                free.append(job.slot)
                free.sort(reverse=True)
                on_end(job, _result(job), time.perf_counter() - job.started)
    except BaseException:
        _stop(running, log)
        raise


def _launch(job: Job, i: int, workdir: Path, on_start: Callable[[Job], None]) -> None:
    """Write job ``i``'s spec into ``workdir`` and start its worker, output into its log file."""
    job.spec.update(parent=os.getpid(), result=str(workdir / f"result{i}.json"))
    spec_path = workdir / f"spec{i}.json"
    spec_path.write_text(json.dumps(job.spec), encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_pythonpath())
    if job.spec["threads"]:  # before torch starts its thread pools
        env.update(OMP_NUM_THREADS=str(job.spec["threads"]), MKL_NUM_THREADS=str(job.spec["threads"]))
    job.run_dir = RunDir(job.spec["run_dir"])
    job.seen_epochs = job.done_epochs
    job.started = time.perf_counter()
    on_start(job)
    with open(job.spec["log"], "ab") as out:
        job.process = subprocess.Popen(
            [sys.executable, "-m", "rnnlab.experiments.worker", str(spec_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _pythonpath() -> str:
    """``$PYTHONPATH`` with this process's rnnlab first: the workers import the same code as the parent."""
    import rnnlab

    root = str(Path(rnnlab.__file__).resolve().parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return os.pathsep.join([root, *rest])


def _poll_epochs(job: Job, on_epoch: Callable[[Job, list[dict[str, Any]]], None]) -> None:
    try:
        rows = job.run_dir.read_metrics()  # a row being appended (cut short) is not read yet
    except RnnlabError:
        return
    if len(rows) > job.seen_epochs:
        job.seen_epochs = len(rows)
        on_epoch(job, rows)


def _stop(running: list[Job], log: Callable[[str], None]) -> None:
    """SIGTERM every running worker, wait for them to write their state, SIGKILL stragglers."""
    for job in running:
        if job.process.poll() is None:
            job.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    try:
        for job in running:
            try:
                job.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"compare: {job.label} did not stop within {STOP_GRACE_SECONDS:.0f} s; killing it")
                job.process.kill()
                job.process.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: do not wait for the workers to save their state
        for job in running:
            if job.process.poll() is None:
                job.process.kill()
                job.process.wait()
        raise
