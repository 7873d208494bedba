"""CLI: ``rnnlab report`` (a thin wrapper over rnnlab.report.write_report; ``compare`` is in rnnlab.experiments)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: Any) -> None:
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


def _report(args: argparse.Namespace) -> int:
    from rnnlab.report.build import write_report

    report = write_report(args.paths, args.out, title=args.title)
    if args.html:
        from rnnlab.report.html import write_html_report

        report.files.append(write_html_report(report, args.out, title=args.title))
    print(report.markdown.split("\n*final*")[0].rstrip())
    print(f"\nwrote {', '.join(str(f) for f in report.files)}")
    return 0
