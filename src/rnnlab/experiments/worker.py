"""``rnnlab compare --jobs N``, the worker side: ``python -m rnnlab.experiments.worker SPEC`` trains one run.

Started by :mod:`rnnlab.experiments.pool` with its stdout and stderr going to the run's
``.worker.log``; it reports to the parent through a result file (JSON) only.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from rnnlab._io import write_json
from rnnlab.errors import RnnlabError


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
        message = _train(spec)
    except KeyboardInterrupt:
        print("=== interrupted (completed epochs are kept; the same compare command resumes)", flush=True)
        message = {"status": "interrupted", "error": "interrupted"}
    except BaseException as err:  # noqa: BLE001 - any failure is this run's, reported to the parent
        traceback.print_exc()
        why = str(err) if isinstance(err, RnnlabError) else f"{type(err).__name__}: {err}"
        message = {"status": "failed", "error": why}
    write_json(Path(spec["result"]), message)
    print(f"=== worker done: {message['status']}", flush=True)
    return 0 if message["status"] == "ok" else 1


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from rnnlab.experiments.provider import DataProvider
    from rnnlab.train import Config, train_and_evaluate

    config = Config.from_dict(spec["config"])
    t0 = time.perf_counter()
    given = None
    if spec["data_file"]:
        with open(spec["data_file"], "rb") as fh:
            given = pickle.load(fh)
    data = DataProvider(given, cache_dir=spec["cache_dir"], progress=False).encoded(config)
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
    return {"status": "ok", "rows": rows, "data_from_cache": from_cache, "threads": threads}


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1]))
