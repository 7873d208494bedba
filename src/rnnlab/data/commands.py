"""``rnnlab data inspect``: what a dataset holds and how it encodes (labels, vocabulary, lengths, timing)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect datasets", description="Dataset tools.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    p = sub.add_parser(
        "inspect",
        help="examples per label, vocabulary size, token counts and length percentiles per split",
        description="Load and encode a dataset (IMDB archive or folder, CSV/TSV/JSONL, label-per-subfolder "
        "folder) and print per split the examples per label, token counts, length percentiles, "
        "the vocabulary size and how long loading took.",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="dataset path (default: $RNNLAB_DATA, else download IMDB into the cache)",
    )
    p.add_argument("--test", default=None, metavar="PATH", help="separate test file or folder (own data)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="cache folder (default $RNNLAB_CACHE or ~/.cache/rnnlab)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--max-words", type=int, default=20000, help="vocabulary size without padding (default 20000)")
    p.add_argument("--min-freq", type=int, default=1, help="rarer words map to <unk> (default 1)")
    p.add_argument("--max-len", type=int, default=200, help="tokens kept per text (default 200)")
    p.add_argument(
        "--truncate",
        choices=("head", "tail", "head_tail"),
        default="head",
        help="keep the first, the last, or the first quarter + last three quarters of max_len tokens",
    )
    p.add_argument("--val-fraction", type=float, default=0.0, help="validation share carved from train")
    p.add_argument(
        "--val-split",
        choices=("group", "random"),
        default="group",
        help="IMDB: by movie (default) or at random, stratified by label",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the splits")
    p.add_argument("--text-column", default="text", help="own data: text column (default text)")
    p.add_argument("--label-column", default="label", help="own data: label column (default label)")
    p.add_argument("--group-column", default=None, help="own data: split by this column's groups")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="own data without --test: the share held out for testing (default 0.2)",
    )
    p.set_defaults(func=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    from rnnlab.data import encode_dataset, load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(
        args.data,
        test=args.test,
        cache_dir=args.cache_dir,
        val_fraction=args.val_fraction,
        val_split=args.val_split,
        seed=args.seed,
        progress=not args.json,
        text_column=args.text_column,
        label_column=args.label_column,
        group_column=args.group_column,
        test_fraction=args.test_fraction,
        use_cache=not args.no_cache,
    )
    t1 = time.perf_counter()
    enc = encode_dataset(
        ds,
        max_words=args.max_words,
        min_freq=args.min_freq,
        max_len=args.max_len,
        truncate=args.truncate,
        cache_dir=args.cache_dir,
        progress=not args.json,
        use_cache=not args.no_cache,
    )
    t2 = time.perf_counter()
    report = inspect_report(ds, enc, load_seconds=t1 - t0, encode_seconds=t2 - t1)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        sys.stdout.write(format_report(report))
    return 0


def inspect_report(ds: Any, enc: Any, *, load_seconds: float, encode_seconds: float) -> dict[str, Any]:
    """Per-split statistics of an encoded dataset as a JSON-serialisable dict."""
    splits = {}
    for name, split in enc.splits().items():
        ntok = split.num_tokens.numpy()
        lengths = split.lengths.numpy()
        labels = split.labels.numpy()
        counts = np.bincount(labels, minlength=len(enc.label_names))
        kept_unk = int((split.ids == enc.vocab.unk_id).sum())
        pct = np.percentile(ntok, [50, 90, 95, 99]) if len(ntok) else np.zeros(4)
        splits[name] = {
            "examples": int(len(split)),
            "per_label": {n: int(c) for n, c in zip(enc.label_names, counts)},
            "tokens": int(ntok.sum()),
            "tokens_kept": int(lengths.sum()),
            "unk_rate": kept_unk / max(int(lengths.sum()), 1),
            "length": {
                "mean": float(ntok.mean()) if len(ntok) else 0.0,
                "p50": float(pct[0]),
                "p90": float(pct[1]),
                "p95": float(pct[2]),
                "p99": float(pct[3]),
                "max": int(ntok.max(initial=0)),
            },
            "truncated": int((ntok > split.ids.shape[1]).sum()),
        }
    return {
        "source": ds.source,
        "fingerprint": ds.fingerprint,
        "label_names": list(enc.label_names),
        "vocab_size": len(enc.vocab),
        "settings": enc.settings,
        "tokenizer": enc.tokenizer.to_dict(),
        "splits": splits,
        "seconds": {
            "load": round(load_seconds, 3),
            "encode": round(encode_seconds, 3),
            "total": round(load_seconds + encode_seconds, 3),
        },
        "encoding_from_cache": bool(enc.from_cache),
    }


def format_report(r: dict[str, Any]) -> str:
    names = r["label_names"]
    s = r["settings"]
    lines = [
        f"data: {r['source']}",
        f"labels: {', '.join(names)}",
        f"vocabulary: {r['vocab_size']:,} ids (<pad>, <unk> and {r['vocab_size'] - 2:,} words; "
        f"max_words={s['max_words']}, min_freq={s['min_freq']}); max_len={s['max_len']} ({s['truncate']})",
        "",
    ]
    head = ["split", "examples", *names, "tokens", "mean", "p50", "p90", "p95", "p99", "max", "truncated", "unk"]
    rows = [head]
    for name, sp in r["splits"].items():
        ln = sp["length"]
        rows.append(
            [
                name,
                f"{sp['examples']:,}",
                *(f"{sp['per_label'][n]:,}" for n in names),
                f"{sp['tokens']:,}",
                f"{ln['mean']:.1f}",
                f"{ln['p50']:.0f}",
                f"{ln['p90']:.0f}",
                f"{ln['p95']:.0f}",
                f"{ln['p99']:.0f}",
                f"{ln['max']}",
                f"{sp['truncated']:,}",
                f"{100 * sp['unk_rate']:.2f}%",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    sec = r["seconds"]
    lines += [
        "",
        "lengths are tokens per text before truncation; unk is the share of kept tokens mapped to <unk>",
        f"loaded in {sec['load']:.2f} s, encoded in {sec['encode']:.2f} s"
        f"{' (from cache)' if r['encoding_from_cache'] else ''}, total {sec['total']:.2f} s",
    ]
    return "\n".join(lines) + "\n"
