"""``rnnlab compare --jobs N``: up to N runs (experiment x seed) at once, one worker process each.

The parent plans the runs, encodes each data setting once into the encoded-dataset cache,
then starts workers that load the data from that cache and call ``train_and_evaluate`` with
progress off. A worker is a fresh interpreter (``python -m rnnlab.report._jobs SPEC``, the
same isolation as multiprocessing's "spawn", safe with torch's thread pools) and, unlike
"spawn", never re-imports the caller's ``__main__`` (``python -m rnnlab`` and unguarded scripts
would otherwise run again in every worker). Its stdout and stderr, from the first byte, go to
``DIR/<name>/seed<k>.worker.log`` beside its run directory (not inside: ``train_and_evaluate``
refuses a non-empty new run directory). Only the parent prints: it polls each running run's
``metrics.jsonl`` for finished epochs, so lines never interleave.

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

import heapq
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def log_path(run_dir: Path) -> Path:
    """Where a worker's stdout/stderr go: ``DIR/<name>/seed<k>.worker.log``, beside the run directory."""
    return run_dir.parent / f"{run_dir.name}.worker.log"


# ----------------------------------------------------------------------------- the worker (child side)


def _watch_parent(parent: int) -> None:
    """Stop this worker (as on Ctrl-C) when the parent is gone, instead of training on as an orphan."""
    while os.getppid() == parent:
        time.sleep(2.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("stopped by rnnlab compare (SIGTERM)")


def worker_main(spec_path: str) -> int:
    """One worker: the ``train_and_evaluate`` call described by the JSON file ``spec_path``.

    spec: ``config`` (dict), ``run_dir``, ``resume``, ``threads`` (torch threads to set, or
    None), ``data_file`` (a pickled TextDataset / EncodedData, or None: load ``config.data``),
    ``cache_dir``, ``parent`` (pid), ``result`` (file to write). The result file (JSON) holds
    ``{"status": "ok", "rows", "data_from_cache", "threads"}`` or ``{"status": "failed" |
    "interrupted", "error"}``. Output goes to this process's stdout/stderr (the log file).
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    threading.Thread(target=_watch_parent, args=(spec["parent"],), daemon=True).start()
    print(
        f"=== rnnlab compare worker, pid {os.getpid()}, started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: {spec['run_dir']}"
        f"{' (resuming)' if spec['resume'] else ''}",
        flush=True,
    )
    try:
        import torch

        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        from rnnlab.report.compare import _DataProvider
        from rnnlab.train import Config, train_and_evaluate

        config = Config.from_dict(spec["config"])
        t0 = time.perf_counter()
        given = None
        if spec["data_file"]:
            with open(spec["data_file"], "rb") as fh:
                given = pickle.load(fh)
        data = _DataProvider(given, cache_dir=spec["cache_dir"], progress=False).encoded(config)
        from_cache = data is given or bool(getattr(data, "from_cache", False))
        threads = config.num_threads or torch.get_num_threads()  # train_and_evaluate sets num_threads > 0
        how = (
            "as given (encoded by the caller)"
            if data is given
            else "from the encoded cache"
            if from_cache
            else "encoded here (the cache missed)"
        )
        print(
            f"torch threads: {threads}; data: {len(data.train):,} train / {len(data.test):,} test, {how} "
            f"({time.perf_counter() - t0:.2f} s)",
            flush=True,
        )
        rows = train_and_evaluate(config, Path(spec["run_dir"]), data=data, resume=spec["resume"], progress=False)
        message: dict[str, Any] = {"status": "ok", "rows": rows, "data_from_cache": from_cache, "threads": threads}
    except KeyboardInterrupt:
        print("=== interrupted (completed epochs are kept; the same compare command resumes)", flush=True)
        message = {"status": "interrupted", "error": "interrupted"}
    except BaseException as err:  # noqa: BLE001 - any failure is this run's, reported to the parent
        traceback.print_exc()
        from rnnlab.train import TrainingError

        why = str(err) if isinstance(err, TrainingError) else f"{type(err).__name__}: {err}"
        message = {"status": "failed", "error": why}
    from rnnlab._io import write_json

    write_json(Path(spec["result"]), message)
    print(f"=== worker done: {message['status']}", flush=True)
    return 0 if message["status"] == "ok" else 1


# ----------------------------------------------------------------------------- the pool (parent side)


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
    metrics: Path = field(default_factory=Path)


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
    read_rows: Callable[[Path], list[dict[str, Any]]],
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
                i = len(jobs) - len(queue)
                job.spec.update(parent=os.getpid(), result=str(workdir / f"result{i}.json"))
                spec_path = workdir / f"spec{i}.json"
                spec_path.write_text(json.dumps(job.spec), encoding="utf-8")
                env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_pythonpath())
                if job.spec["threads"]:  # before torch starts its thread pools
                    env.update(OMP_NUM_THREADS=str(job.spec["threads"]), MKL_NUM_THREADS=str(job.spec["threads"]))
                job.metrics = Path(job.spec["run_dir"]) / "metrics.jsonl"
                job.seen_epochs = job.done_epochs
                job.started = time.perf_counter()
                on_start(job)
                with open(job.spec["log"], "ab") as out:
                    job.process = subprocess.Popen(
                        [sys.executable, "-m", "rnnlab.report._jobs", str(spec_path)],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                running.append(job)
            time.sleep(POLL_SECONDS)
            for job in list(running):
                if job.process.poll() is None:
                    _poll_epochs(job, on_epoch, read_rows)
                    continue
                _poll_epochs(job, on_epoch, read_rows)
                running.remove(job)
                free.append(job.slot)
                free.sort(reverse=True)
                on_end(job, _result(job), time.perf_counter() - job.started)
    except BaseException:
        _stop(running, log)
        raise


def _pythonpath() -> str:
    """``$PYTHONPATH`` with this process's rnnlab first: the workers import the same code as the parent."""
    import rnnlab

    root = str(Path(rnnlab.__file__).resolve().parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return os.pathsep.join([root, *rest])


def _poll_epochs(job: Job, on_epoch, read_rows) -> None:
    try:
        rows = read_rows(job.metrics) if job.metrics.is_file() else []
    except (OSError, ValueError):
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


def greedy_finish(running: list[float], queued: list[float], slots: int) -> float:
    """Seconds until all work is done on ``slots`` parallel slots (list scheduling, in queue order).

    running: seconds left of the runs already on a slot; queued: estimated seconds of each run
    still to start, started in order on the first slot to free up. Returns the latest finish.
    """
    free = sorted(running)[:slots] + [0.0] * max(0, slots - len(running))
    heapq.heapify(free)
    for seconds in queued:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free) if free else 0.0


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1]))
