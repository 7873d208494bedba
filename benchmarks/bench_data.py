"""Benchmark rnnlab.data on the real IMDB archive: cold (archive -> encoded tensors) and from the cache.

    python benchmarks/bench_data.py [--data PATH] [--workers N] [--repeat K]

Targets (issue 3, on the 2-core development machine): cold <= 10 s, from the cache <= 1 s.
Each cold run uses a fresh, empty cache folder; the cached run reuses the last cold run's folder.
CPU seconds (this process + its workers) are printed beside wall seconds: on a shared machine
the wall time also includes waiting for the CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from rnnlab.data import encode_dataset, load_imdb, make_loader

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(path: Path, cache: Path, workers: int | None) -> dict[str, float]:
    w0, c0 = time.perf_counter(), cpu_seconds()
    ds = load_imdb(path, cache_dir=cache, progress=False)
    w1 = time.perf_counter()
    data = encode_dataset(ds, cache_dir=cache, progress=False, workers=workers)
    w2, c2 = time.perf_counter(), cpu_seconds()
    assert len(data.train) == len(data.test) == 25000 and len(data.vocab) == 20001
    return {
        "load": w1 - w0,
        "encode": w2 - w1,
        "total": w2 - w0,
        "cpu": c2 - c0,
        "cached": data.from_cache,
        "data": data,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("RNNLAB_DATA") or DEFAULT))
    ap.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: auto)")
    ap.add_argument("--repeat", type=int, default=1, help="cold runs (each with a fresh cache)")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"bench_data: {args.data} not found (pass --data)")
    torch.set_num_threads(1)
    print(f"data: {args.data}  cpus: {os.cpu_count()}  load average: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="rnnlab-bench-") as tmp:
        for k in range(args.repeat):
            cache = Path(tmp) / f"cache{k}"
            r = run(args.data, cache, args.workers)
            print(
                f"cold   : load {r['load']:5.2f} s + encode {r['encode']:5.2f} s = {r['total']:5.2f} s wall "
                f"({r['cpu']:5.2f} s CPU)   target <= 10 s"
            )
        r = run(args.data, cache, args.workers)
        assert r["cached"]
        print(
            f"cached : load {r['load']:5.2f} s + encode {r['encode']:5.2f} s = {r['total']:5.2f} s wall "
            f"({r['cpu']:5.2f} s CPU)   target <= 1 s"
        )
        train = r["data"].train
        for bucket in (False, True):
            loader = make_loader(train, 64, shuffle=True, bucket=bucket)
            t = time.perf_counter()
            cells = sum(ids.numel() for ids, _, _ in loader)
            dt = time.perf_counter() - t
            print(
                f"loader : one train epoch, batch 64, bucket={bucket!s:5}: {dt * 1e3:6.1f} ms, "
                f"{len(loader)} batches, padding {1 - int(train.lengths.sum()) / cells:5.1%}"
            )


if __name__ == "__main__":
    main()
