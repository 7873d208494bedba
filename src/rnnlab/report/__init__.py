"""Comparison tables and plots from run directories (``rnnlab.experiments`` runs the comparisons).

    from rnnlab.report import write_report
    write_report(["runs/"], "report/")                  # results.md, results.csv, *.png

It reads run directories only, through ``rnnlab.rundir``, and never imports torch or the training code.
"""

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
    "summarize",
    "write_report",
]
