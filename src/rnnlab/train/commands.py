"""CLI: ``rnnlab train``, ``evaluate``, ``predict`` and ``presets`` (thin wrappers over rnnlab.train)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from rnnlab.errors import UsageError
from rnnlab.train.evaluate import PREDICTION_FORMATS


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one experiment into a run directory",
        description="Train one experiment (defaults <- --preset/--config <- --set) into RUN_DIR, evaluating on "
        "the test split (and validation, when configured) after every epoch.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        metavar="NAME",
        help="a packaged preset (e.g. seed/lstm; `rnnlab presets` lists them) or a TOML file",
    )
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
    add_dataset_options(p)
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
    p.add_argument(
        "--data",
        metavar="PATH",
        help="dataset path (default: the run's data / $RNNLAB_DATA); its test split is held out with the run's "
        "columns and test_fraction, unless --test is given",
    )
    p.add_argument("--test", metavar="PATH", help="a separate test file or folder (default: the run's test_data)")
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
        description="Print each text's predicted label and its probability: texts as arguments, one a line on "
        "stdin, or many from --file (a text file, one text a line, or a CSV/TSV/JSONL file with a text column), "
        "classified in batches with a progress bar. Every text is checked before the first result is written; "
        "--output is written atomically (all or nothing).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to classify (default: lines of stdin)")
    p.add_argument(
        "--file",
        metavar="PATH",
        help="classify the texts of this file: .csv/.tsv/.jsonl: the --text-column of each row; any other "
        "file: one text a line (an empty line is an error)",
    )
    p.add_argument(
        "--text-column", metavar="NAME", help="the text column of a --file table (default: the run's text_column)"
    )
    p.add_argument(
        "--format",
        choices=PREDICTION_FORMATS,
        help="table (label, probability, text), json (one array), jsonl (one object a line) or csv (header, "
        "then label, probability, p_<label>..., text); --file adds each text's input line. Default: from the "
        "--output suffix (.csv, .json, .jsonl), else jsonl with --file or --output, else table",
    )
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--output", metavar="FILE", help="write the predictions to FILE (default: stdout)")
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="texts per forward pass (default: the run's eval_batch_size)"
    )
    p.add_argument("--checkpoint", type=_checkpoint_arg, default="auto", metavar="auto|best|last|epoch_K")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown for --file and stdin)")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "presets",
        help="list the packaged presets, or print one",
        description="Without NAME: every packaged preset with a one-line description. With NAME: the preset's "
        "TOML text, to copy and edit (rnnlab presets default > mine.toml; "
        "rnnlab train --config mine.toml ...).",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="a preset to print (e.g. seed/lstm)")
    p.set_defaults(func=_presets)


#: The dataset options of `rnnlab train` and `rnnlab compare`: flag -> config key.
DATASET_OPTIONS = {
    "test": "test_data",
    "text_column": "text_column",
    "label_column": "label_column",
    "group_column": "group_column",
    "test_fraction": "test_fraction",
}


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    """``--test``, ``--text-column``, ``--label-column``, ``--group-column``, ``--test-fraction``.

    Each sets the config key of the same meaning (``DATASET_OPTIONS``), as ``--set key=VALUE``
    would; they apply to your own CSV/TSV/JSONL files or label folders, not to IMDB.
    """
    g = p.add_argument_group("your own data (CSV/TSV/JSONL or one folder per label; config keys in brackets)")
    g.add_argument(
        "--test",
        metavar="PATH",
        help="a separate test file or folder [test_data] (default: hold out --test-fraction of --data)",
    )
    g.add_argument("--text-column", metavar="NAME", help="the text column [text_column] (default text)")
    g.add_argument("--label-column", metavar="NAME", help="the label column [label_column] (default label)")
    g.add_argument(
        "--group-column",
        metavar="NAME",
        help="keep each group's rows on one side of the test and validation splits [group_column] (default: "
        "random splits, stratified by label)",
    )
    g.add_argument(
        "--test-fraction",
        metavar="F",
        type=float,
        help="the share of --data held out for testing without --test [test_fraction] (default 0.2)",
    )


def dataset_overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of the dataset options given on the command line."""
    return [f"{key}={getattr(args, flag)}" for flag, key in DATASET_OPTIONS.items() if getattr(args, flag) is not None]


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
    overrides += dataset_overrides(args)
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

    result = evaluate_run(
        args.run_dir, checkpoint=args.checkpoint, data_path=args.data, test_path=args.test, progress=not args.json
    )
    print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from rnnlab.train.evaluate import iter_predictions, load_run, write_predictions

    fmt = _prediction_format(args)
    _check_predict_args(args)
    stdin_lines = None if args.file or args.texts else _stdin_lines()
    try:
        run = load_run(args.run_dir, checkpoint=args.checkpoint)
        texts, where = _text_source(args, run.config.text_column, stdin_lines)
        batch_size = args.batch_size or run.config.eval_batch_size
        progress = not args.no_progress and not args.texts
        rows = iter_predictions(run, texts, where=where, batch_size=batch_size, progress=progress)

        def write(out: Any) -> int:
            return write_predictions(rows, out, fmt, run.label_names, line_numbers=bool(args.file))

        if args.output:
            count = _write_atomically(Path(args.output), write)
            print(f"wrote {count} predictions to {args.output} ({fmt})", file=sys.stderr)
        else:
            write(sys.stdout)
    except BrokenPipeError:  # `rnnlab predict ... | head`: the reader has gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 1
    return 0


def _check_predict_args(args: argparse.Namespace) -> None:
    if args.file and args.texts:
        raise UsageError("give the texts as arguments or in --file PATH, not both")
    if args.text_column and not args.file:
        raise UsageError("--text-column names the text column of a --file table; give --file PATH")
    if args.file and args.output and Path(args.output).resolve() == Path(args.file).resolve():
        raise UsageError(f"--output {args.output} is the --file to classify: choose another output file")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")


def _text_source(
    args: argparse.Namespace, run_text_column: str, stdin_lines: list[tuple[int, str]] | None
) -> tuple[Any, Any]:
    """``(texts, where)`` for ``iter_predictions``: a function giving fresh ``(number, text)`` pairs
    (a file is read twice: to check, then to classify) and how to name text ``number`` in errors."""
    from rnnlab.data import iter_texts

    if args.file:
        column = args.text_column or run_text_column
        return (lambda: iter_texts(args.file, text_column=column)), f"{args.file}:{{}}".format
    if args.texts:
        return (lambda: enumerate(args.texts, 1)), "text {}".format
    return (lambda: stdin_lines), "stdin line {}".format


def _stdin_lines() -> list[tuple[int, str]]:
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError(
            'no texts: pass them as arguments (rnnlab predict RUN_DIR "text" ...), in --file PATH, '
            "or one per line on stdin"
        )
    lines = [(i, line.rstrip("\r\n")) for i, line in enumerate(sys.stdin, 1) if line.strip()]
    if not lines:
        raise UsageError("no texts on stdin (empty lines are skipped)")
    return lines


def _write_atomically(path: Path, write: Any) -> int:
    """``write(file)`` into a temporary file that replaces ``path`` only when it returns (rnnlab._io)."""
    from rnnlab._io import atomic_write

    count = 0

    def to_tmp(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            count = write(out)

    atomic_write(path, to_tmp)
    return count


def _prediction_format(args: argparse.Namespace) -> str:
    """--format, else --json, else from the --output suffix, else jsonl for --file/--output, else table."""
    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json and --format {args.format} disagree: give one of them")
    if args.format or args.json:
        return args.format or "json"
    suffix = Path(args.output).suffix.lower() if args.output else ""
    by_suffix = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
    return by_suffix.get(suffix) or ("jsonl" if args.file or args.output else "table")


def _presets(args: argparse.Namespace) -> int:
    from rnnlab.train.config import list_presets, resolve_preset

    if args.name is not None:
        sys.stdout.write(resolve_preset(args.name).read_text(encoding="utf-8"))
        return 0
    presets = list_presets()
    if not presets:
        from rnnlab.train.config import PRESETS_DIR

        raise UsageError(f"no presets found in {PRESETS_DIR}: this rnnlab installation is incomplete")
    width = max(len(p.name) for p in presets)
    for p in presets:
        suite = f"(suite of {len(p.experiments)}) " if p.experiments else ""
        print(f"{p.name:<{width}}  {suite}{p.description}")
    return 0
