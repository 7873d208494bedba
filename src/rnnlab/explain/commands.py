"""CLI: ``rnnlab explain`` and ``rnnlab study gradients`` (thin wrappers over rnnlab.explain)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "explain",
        help="why a trained run predicts what it does: attributions, gates, states",
        description="For each TEXT: the prediction, each token's Integrated Gradients attribution (log-odds of "
        "the predicted label against an all-padding baseline, with its convergence delta) and, for LSTM and "
        "GRU runs, every gate and the norms of the cell and hidden state at every token, from rnnlab's own "
        "cells in trace mode. Writes OUT/explain.html (one self-contained page), OUT/explain.json and PNG "
        "figures; --json prints the same numbers instead (files only with --out).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (rnnlab train)")
    p.add_argument("texts", metavar="TEXT", nargs="+", help="texts to explain")
    p.add_argument("--out", metavar="DIR", help="folder for explain.html, explain.json and PNGs (default: ./explain)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON (no files unless --out)")
    p.add_argument(
        "--checkpoint",
        choices=("auto", "best", "last"),
        default="auto",
        help="auto: best when the run had a validation split, else last",
    )
    p.add_argument(
        "--steps", type=_positive, default=None, metavar="N", help="Integrated Gradients points (default 64)"
    )
    p.set_defaults(func=_explain)

    p = subparsers.add_parser("study", help="studies of trained runs (gradients)")
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    q = studies.add_parser(
        "gradients",
        help="gradient connectivity over distance and gate saturation, per run (and over training)",
        description="For each run: the mean norm of the gradient of the predicted logit with respect to the input "
        "embedding at each position, against the distance from the end of the review, over N test reviews; "
        "and for LSTM/GRU runs the fraction of steps at which each sigmoid gate unit is below 0.1 or above "
        "0.9 (Karpathy, Johnson & Fei-Fei 2015), and the product of the forget (LSTM) or update (GRU) gates "
        "over the last d steps, the cell's direct memory path. With --over-training, the same at every per-epoch "
        "checkpoint (checkpoints/epoch_{k}.pt, k = 0 the initial weights). Writes PNG figures and "
        "study.json into --out.",
    )
    q.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="finished run directories")
    q.add_argument(
        "--out", metavar="DIR", default="study", help="folder for the figures and study.json (default: ./study)"
    )
    q.add_argument("--examples", type=_positive, default=500, metavar="N", help="test reviews used (default 500)")
    q.add_argument("--data", metavar="PATH", help="dataset path (default: each run's data / $RNNLAB_DATA)")
    q.add_argument("--over-training", action="store_true", help="also every per-epoch checkpoint of each run")
    q.add_argument("--checkpoint", choices=("auto", "best", "last"), default="auto")
    q.set_defaults(func=_study_gradients)


def _explain(args: argparse.Namespace) -> int:
    from rnnlab.explain.explain import DEFAULT_STEPS, explain_texts, write_explanation
    from rnnlab.explain.runs import open_run

    run = open_run(args.run_dir, checkpoint=args.checkpoint)
    result = explain_texts(run, args.texts, steps=args.steps or DEFAULT_STEPS)
    out = args.out or (None if args.json else "explain")
    files = write_explanation(result, out) if out else []
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0
    for k, text in enumerate(result["texts"], 1):
        read = sorted((t for t in text["tokens"] if t["read"]), key=lambda t: -abs(t["attribution"]))
        top = ", ".join(f"{t['token']} {t['attribution']:+.3f}" for t in read[:6])
        print(
            f"text {k}: {text['label']} (p = {text['probability']:.3f}); delta {text['delta']:+.1e}; strongest: {top}"
        )
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _study_gradients(args: argparse.Namespace) -> int:
    from rnnlab.explain.study import run_gradient_study

    study = run_gradient_study(
        args.run_dirs,
        args.out,
        examples=args.examples,
        data=args.data,
        over_training=args.over_training,
        checkpoint=args.checkpoint,
    )
    for run in study["runs"]:
        c = run["final"]["connectivity"]
        far = c["mean_norm"][min(len(c["mean_norm"]) - 1, 100)]
        print(f"{run['name']}: gradient norm at the last token {c['mean_norm'][0]:.3g}, 100 tokens before it {far:.3g}")
    print(f"wrote {', '.join(study['files'])}")
    return 0
