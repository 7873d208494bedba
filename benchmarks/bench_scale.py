"""Corpora larger than memory: encode 1,000,000 generated reviews (streaming, memory-mapped cache) and train one epoch.

    python benchmarks/bench_scale.py [--n 1000000] [--out DIR] [--seed 0]

Generates ``n`` synthetic reviews (seeded: 20-80 words drawn from a Zipf(1.1) vocabulary of 50,000
pseudo-words, plus 1-4 sentiment words of the review's label and 0-1 of the other label) as JSONL,
then measures, each in a fresh child process so that peaks do not mix:

- encode: ``load_dataset(path)`` (the validating scan) + ``encode_dataset`` (the streaming encode;
  forced for small ``--n``, automatic above ``STREAM_MIN_BYTES``) into an empty cache, as
  ``rnnlab train --data`` does;
- epoch: the same two calls (now a cache hit, ids memory-mapped), then one training epoch of an
  LSTM (embedding 32, hidden 32, max_len 64, batch 256, bucketed, Adam, 1 thread) over the train split.

Peak memory is the child's ``VmHWM`` (peak resident set, /proc/self/status); ``RssAnon`` and
``RssFile`` at the end split it into the process's own memory and pages of mapped files (the ids
a pass has touched stay resident in the page cache and count as RssFile until the kernel needs
the memory back). Target (issue 9): epoch peak RSS under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SENTIMENT = {
    "pos": [
        "great",
        "wonderful",
        "superb",
        "loved",
        "brilliant",
        "moving",
        "charming",
        "excellent",
        "delightful",
        "masterpiece",
    ],
    "neg": ["awful", "boring", "terrible", "hated", "dull", "waste", "poor", "mess", "worst", "tedious"],
}


def _pseudo_words(n: int) -> np.ndarray:
    """n distinct pseudo-words: "q" + the 4-letter base-26 spelling of 0..n-1 (no sentiment word starts with q)."""
    assert n <= 26**4
    letters = "abcdefghijklmnopqrstuvwxyz"
    return np.array(["q" + "".join(letters[i // 26**k % 26] for k in (3, 2, 1, 0)) for i in range(n)], dtype=object)


def generate(path: Path, n: int, seed: int, vocab: int = 50000, chunk: int = 50000) -> None:
    """Write ``n`` seeded synthetic reviews to ``path`` (JSONL, fields text and label)."""
    rng = np.random.default_rng(seed)
    words = _pseudo_words(vocab)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    cdf = np.cumsum(p / p.sum())
    pos, neg = np.array(SENTIMENT["pos"], dtype=object), np.array(SENTIMENT["neg"], dtype=object)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            lens = rng.integers(20, 81, m)
            idx = np.searchsorted(cdf, rng.random(int(lens.sum())))
            flat = words[np.minimum(idx, vocab - 1)]
            labels = rng.integers(0, 2, m)
            n_own, n_other = rng.integers(1, 5, m), rng.integers(0, 2, m)
            lines = []
            offsets = np.concatenate([[0], np.cumsum(lens)])
            for j in range(m):
                toks = list(flat[offsets[j] : offsets[j + 1]])
                own, other = (pos, neg) if labels[j] else (neg, pos)
                extra = list(rng.choice(own, n_own[j])) + list(rng.choice(other, n_other[j]))
                for w in extra:
                    toks.insert(int(rng.integers(0, len(toks) + 1)), w)
                lines.append(json.dumps({"text": " ".join(toks) + ".", "label": "pos" if labels[j] else "neg"}))
            f.write("\n".join(lines) + "\n")


def _mem() -> dict[str, float]:
    """VmHWM, RssAnon, RssFile of this process in MiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) / 1024
    return out


def child(phase: str, data: Path, cache: Path) -> dict[str, float]:
    """One measured phase, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    from rnnlab.data import datasets, encode_dataset, load_dataset, make_loader

    datasets.STREAM_MIN_BYTES = 0  # the streaming path at any --n (1,000,000 reviews are over the threshold anyway)
    base = _mem()["RssAnon"]
    t0 = time.perf_counter()
    ds = load_dataset(data, progress=False)
    t1 = time.perf_counter()
    enc = encode_dataset(ds, max_len=64, cache_dir=cache, progress=False)
    t2 = time.perf_counter()
    res = {
        "scan_s": t1 - t0,
        "encode_s": t2 - t1,
        "from_cache": float(enc.from_cache),
        "base_anon": base,
        "n_train": len(enc.train),
        "vocab": len(enc.vocab),
    }
    if phase == "epoch":
        from rnnlab.models import build_model
        from rnnlab.train import Config

        config = Config(cell="lstm", embedding_dim=32, hidden_size=32, max_len=64, batch_size=256, num_threads=1)
        torch.manual_seed(0)
        model = build_model(config, len(enc.vocab), len(enc.label_names))
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        loader = make_loader(enc.train, config.batch_size, shuffle=True, seed=0, bucket=True)
        loader.set_epoch(0)
        model.train()
        t3 = time.perf_counter()
        total, correct, loss_sum = 0, 0, 0.0
        for ids, lengths, labels in loader:
            out = model(ids, lengths)
            loss = loss_fn(out, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += len(labels)
            correct += int((out.argmax(-1) == labels).sum())
            loss_sum += float(loss) * len(labels)
        res.update(
            epoch_s=time.perf_counter() - t3, train_acc=correct / total, train_loss=loss_sum / total, examples=total
        )
    res.update(_mem())
    return res


def _run_child(phase: str, data: Path, cache: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", phase, "--data", str(data), "--cache", str(cache)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"bench_scale: the {phase} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="reviews to generate (default 1,000,000)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the corpus and cache (default: a temp dir, removed afterwards)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["encode", "epoch"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.cache)))
        return
    root = args.out or Path(tempfile.mkdtemp(prefix="rnnlab-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        data, cache = root / f"reviews_{args.n}.jsonl", root / "cache"
        t0 = time.perf_counter()
        if not data.exists():
            generate(data, args.n, args.seed)
        gen_s = time.perf_counter() - t0
        shutil.rmtree(cache, ignore_errors=True)  # the encode phase starts from an empty cache
        enc = _run_child("encode", data, cache)
        ep = _run_child("epoch", data, cache)
        assert not enc["from_cache"] and ep["from_cache"], (enc, ep)
        ids_mb = sum(f.stat().st_size for f in cache.rglob("*_ids.npy")) / 2**20
        print(
            f"corpus: {args.n:,} reviews, {data.stat().st_size / 2**20:.0f} MiB JSONL ({gen_s:.0f} s to generate); "
            f"vocab {int(enc['vocab']):,} ids; train {int(enc['n_train']):,}; ids files {ids_mb:.0f} MiB; "
            f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}"
        )
        print(f"{'phase':<8} {'seconds':>28} {'peak RSS':>10} {'RssAnon':>9} {'RssFile':>9} {'imports':>9}")
        enc_s = f"scan {enc['scan_s']:.1f} + encode {enc['encode_s']:.1f}"
        epoch_s = f"load {ep['scan_s'] + ep['encode_s']:.1f} + epoch {ep['epoch_s']:.1f}"
        print(
            f"{'encode':<8} {enc_s:>28} "
            f"{enc['VmHWM']:>6.0f} MiB {enc['RssAnon']:>5.0f} MiB {enc['RssFile']:>5.0f} MiB "
            f"{enc['base_anon']:>5.0f} MiB"
        )
        print(
            f"{'epoch':<8} {epoch_s:>28} "
            f"{ep['VmHWM']:>6.0f} MiB {ep['RssAnon']:>5.0f} MiB {ep['RssFile']:>5.0f} MiB "
            f"{ep['base_anon']:>5.0f} MiB"
        )
        ok = ep["VmHWM"] < 2048
        print(
            f"epoch: {int(ep['examples']):,} examples, {ep['examples'] / ep['epoch_s']:,.0f} examples/s, train acc "
            f"{ep['train_acc']:.3f}, loss {ep['train_loss']:.3f}; peak RSS {ep['VmHWM']:.0f} MiB "
            f"{'<' if ok else '>='} 2048 MiB target: {'met' if ok else 'MISSED'}"
        )
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
