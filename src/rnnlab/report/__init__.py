"""Comparison tables and plots from run directories, and ``compare``: a suite of experiments x seeds.

    from rnnlab.report import write_report, run_comparison
    write_report(["runs/"], "report/")                  # results.md, results.csv, *.png
    run_comparison("seed", "cmp/", seeds=3)             # the seven original experiments, then the report

The report side reads run directories only (no torch); ``run_comparison`` trains through
``rnnlab.train`` and is imported on first use.
"""

from __future__ import annotations

from typing import Any

from rnnlab.report.aggregate import ExperimentSummary, Stat, summarize
from rnnlab.report.build import Report, write_report
from rnnlab.report.original import ORIGINAL_RESULTS, OriginalResult
from rnnlab.report.runs import ReportError, RunRecord, discover_runs, read_run

__all__ = [
    "ORIGINAL_RESULTS",
    "ExperimentSummary",
    "OriginalResult",
    "Report",
    "ReportError",
    "RunRecord",
    "Stat",
    "discover_runs",
    "read_run",
    "run_comparison",
    "summarize",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name == "run_comparison":
        from rnnlab.report.compare import run_comparison

        return run_comparison
    raise AttributeError(f"module 'rnnlab.report' has no attribute {name!r}")
