"""Experiments: ``run_comparison`` trains a suite of experiments x seeds into a comparison folder.

    from rnnlab.experiments import run_comparison
    run_comparison("seed", "cmp/", seeds=3, jobs=2)     # the seven original experiments, then the report

plan (which runs are new, to resume, complete) -> provider (each dataset and encoding once) ->
in-process runs or the worker pool (``pool``, ``worker``, ``parallel``) with an ETA (``eta``) ->
the NBSVM baseline (``baseline``) -> ``rnnlab.report.write_report``. Run directories and the
comparison folder are read and written through ``rnnlab.rundir``.
"""

from rnnlab.experiments.baseline import BASELINE_NAME, BaselineResult, nbsvm, write_baseline_run
from rnnlab.experiments.compare import ComparisonResult, run_comparison
from rnnlab.experiments.plan import PlannedRun, plan_comparison

__all__ = [
    "BASELINE_NAME",
    "BaselineResult",
    "ComparisonResult",
    "PlannedRun",
    "nbsvm",
    "plan_comparison",
    "run_comparison",
    "write_baseline_run",
]
