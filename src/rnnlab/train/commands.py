"""CLI: ``rnnlab train``, ``rnnlab evaluate``, ``rnnlab predict`` (thin wrappers over rnnlab.train)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from rnnlab.errors import UsageError


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one experiment into a run directory",
        description="Train one experiment (defaults <- --preset/--config <- --set) into RUN_DIR, evaluating on "
        "the test split (and validation, when configured) after every epoch.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="a preset in configs/ (e.g. seed/lstm) or a TOML file")
    source.add_argument("--config", metavar="FILE", help="a TOML file of config keys")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key (repeatable), e.g. --set hidden_size=128 --set cell=gru",
    )
    p.add_argument("--data", metavar="PATH", help="dataset path (same as --set data=PATH)")
    p.add_argument("--out", metavar="RUN_DIR", required=True, help="the run directory to write")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue RUN_DIR after its last completed epoch")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run on the test split",
        description="Loss, accuracy, per-class precision/recall/F1 and the confusion matrix of a trained run.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="PATH", help="dataset path (default: the run's data / $RNNLAB_DATA)")
    p.add_argument(
        "--checkpoint",
        type=_checkpoint_arg,
        default="auto",
        metavar="auto|best|last|epoch_K",
        help="auto: best when the run had a validation split, else last; epoch_K: the weights after epoch K "
        "(runs trained with keep_epoch_checkpoints = true)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="classify texts with a trained run",
        description="Print each text's predicted label and its probability (texts as arguments, or one per "
        "line on stdin).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to classify (default: lines of stdin)")
    p.add_argument("--checkpoint", type=_checkpoint_arg, default="auto", metavar="auto|best|last|epoch_K")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_predict)


def _checkpoint_arg(text: str) -> str:
    if text in ("auto", "best", "last") or re.fullmatch(r"epoch_\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, best, last or epoch_K (K = 0, 1, ...), got {text!r}")


def _train(args: argparse.Namespace) -> int:
    from rnnlab.rundir import RunDir
    from rnnlab.train.config import load_config
    from rnnlab.train.runner import train_and_evaluate

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data}")
    config_file = args.config
    if args.resume and not args.preset and not config_file and RunDir(args.out).config_path.is_file():
        config_file = RunDir(args.out).config_path  # `--resume` alone continues the run as it was set up
    config = load_config(preset=args.preset, config_file=config_file, overrides=overrides)
    try:
        rows = train_and_evaluate(
            config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
        )
    except KeyboardInterrupt:
        if not _is_main_rank():
            raise
        print(
            f"rnnlab: training interrupted; the completed epochs are kept in {args.out}: continue with "
            f"the same command plus --resume",
            file=sys.stderr,
        )
        raise
    if not _is_main_rank():  # torchrun: rank 0 reports
        return 0
    if rows and "test_acc" in rows[-1]:
        print(f"Done: {len(rows)} epochs, final test accuracy {rows[-1]['test_acc']:.4f}; run directory {args.out}")
    elif rows:
        test = RunDir(args.out).read_info().get("test", {})
        print(
            f"Done: {len(rows)} epochs, test accuracy {test.get('acc', float('nan')):.4f} at epoch "
            f"{test.get('epoch')} (best validation accuracy); run directory {args.out}"
        )
    return 0


def _is_main_rank() -> bool:
    from rnnlab.train.distributed import DistributedError, from_env

    try:
        env = from_env()
    except DistributedError:
        return True
    return env is None or env[1] == 0


def _evaluate(args: argparse.Namespace) -> int:
    from rnnlab.train.evaluate import evaluate_run, format_evaluation

    result = evaluate_run(args.run_dir, checkpoint=args.checkpoint, data_path=args.data, progress=not args.json)
    print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from rnnlab.train.evaluate import predict

    texts = list(args.texts)
    if not texts:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(
                'no texts: pass them as arguments (rnnlab predict RUN_DIR "text" ...) or one per line on stdin'
            )
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise UsageError("no texts on stdin (empty lines are skipped)")
    results = predict(args.run_dir, texts, checkpoint=args.checkpoint)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            text = " ".join(r["text"].split())
            shown = text if len(text) <= 70 else text[:67] + "..."
            print(f"{r['label']}\t{r['probability']:.4f}\t{shown}")
    return 0
