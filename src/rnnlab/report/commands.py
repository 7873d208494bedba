"""CLI: ``rnnlab compare`` and ``rnnlab report`` (thin wrappers over rnnlab.report)."""

from __future__ import annotations

import argparse
from typing import Any

from rnnlab.cli import CLIError


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="run a suite of experiments (x seeds) and report on them",
        description="Run every experiment of a suite preset for --seeds seeds into OUT/<experiment>/seed<k>/ "
        "(complete runs are skipped, interrupted ones resumed), fit a bag-of-words baseline, and "
        "write OUT/results.md, OUT/results.csv and plots.",
    )
    p.add_argument(
        "--preset",
        default="seed",
        metavar="NAME",
        help="a suite preset in configs/ or a TOML file (default: seed, the seven original experiments)",
    )
    p.add_argument("--data", metavar="PATH", help="dataset path (default: $RNNLAB_DATA, else the IMDB download)")
    p.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        help="the comparison folder (new, empty, or an earlier comparison to resume)",
    )
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="runs per experiment (default 1)")
    p.add_argument("--only", metavar="NAME,...", help="run only these experiments (comma-separated)")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key in every experiment (repeatable)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the bag-of-words baseline")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument(
        "--jobs",
        type=_jobs_arg,
        default=1,
        metavar="N",
        help="runs trained at once, each in its own process (default 1: one after another). With "
        "num_threads = 0 each gets max(1, cores // N) torch threads; results equal --jobs 1's "
        "bit for bit only with the same thread count (--set num_threads=K in both). Worker "
        "output: OUT/<experiment>/seed<k>.worker.log",
    )
    p.set_defaults(func=_compare)

    p = subparsers.add_parser(
        "report",
        help="tables and plots from existing run directories",
        description="Find run directories (folders holding run.json and metrics.jsonl) under each path, group "
        "them by experiment name, aggregate over seeds and write results.md, results.csv and plots "
        "into --out. Incomplete runs are listed as such, never as results.",
    )
    p.add_argument("paths", metavar="DIR_OR_RUN_DIR", nargs="+", help="run directories or folders holding them")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the report (other files are kept)")
    p.add_argument("--title", default="rnnlab comparison", help="title of results.md")
    p.add_argument(
        "--html",
        action="store_true",
        help="also write results.html: the report (tables, settings, plots, per-run curves) as one self-contained page",
    )
    p.set_defaults(func=_report)


def _jobs_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (runs trained at once), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (runs trained at once), got {value}")
    return value


def _user_errors() -> tuple[type[BaseException], ...]:
    from rnnlab.report.runs import ReportError
    from rnnlab.train import ConfigError, RunDirError

    errors: list[type[BaseException]] = [ReportError, ConfigError, RunDirError, FileNotFoundError]
    try:
        from rnnlab.data import DataError

        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def _compare(args: argparse.Namespace) -> int:
    from rnnlab.report.compare import run_comparison

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    if args.only is not None and not only:
        raise CLIError("--only needs at least one experiment name (comma-separated)")
    try:
        result = run_comparison(
            args.preset,
            args.out,
            seeds=args.seeds,
            only=only,
            overrides=args.overrides,
            data_path=args.data,
            baseline=not args.no_baseline,
            progress=not args.no_progress,
            jobs=args.jobs,
        )
    except _user_errors() as err:
        raise CLIError(str(err)) from None
    if args.no_progress:
        print(f"{result.out_dir / 'results.md'}")
    if result.failed:
        for path, why in result.failed:
            print(f"rnnlab compare: {path} failed: {why}")
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from rnnlab.report.build import write_report

    try:
        report = write_report(args.paths, args.out, title=args.title)
        if args.html:
            from rnnlab.report.html import write_html_report

            report.files.append(write_html_report(report, args.out, title=args.title))
    except _user_errors() as err:
        raise CLIError(str(err)) from None
    print(report.markdown.split("\n*final*")[0].rstrip())
    print(f"\nwrote {', '.join(str(f) for f in report.files)}")
    return 0
