"""Group runs by experiment name and aggregate them over seeds.

For an experiment with complete runs r = 1..N (one per seed):

    final_acc_r = test_acc at the last epoch of run r
    best_acc_r  = max over epochs of test_acc in run r
    (a run with test_every_epoch = false has one test result, on its best-validation epoch:
    final_acc_r = best_acc_r = that result, best epoch = the epoch validation chose)
    mean = (1/N) sum_r x_r,    std = sqrt( sum_r (x_r - mean)^2 / (N - 1) )   (None when N = 1)

Seconds per epoch is the median of ``epoch_seconds`` over every epoch of every complete run.
Incomplete runs never enter these numbers: they are listed separately.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from rnnlab.report.original import ORIGINAL_RESULTS, OriginalResult
from rnnlab.report.runs import RunRecord

#: Config keys that may differ between the seeds of one experiment without making it a different
#: experiment.
_IGNORED_CONFIG_KEYS = {"seed", "device", "num_threads", "data"}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1) of one quantity over seeds."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            raise ValueError("Stat.of needs at least one value")
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass
class ExperimentSummary:
    """One experiment (all runs sharing a config name), aggregated over its complete runs."""

    name: str
    kind: str
    runs: list[RunRecord]
    incomplete: list[RunRecord]
    final_acc: Stat | None = None
    best_acc: Stat | None = None
    best_epochs: list[int] = field(default_factory=list)
    final_loss: Stat | None = None
    num_params: int | None = None
    epoch_seconds: float | None = None
    epochs: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def original(self) -> OriginalResult | None:
        """The original assignment's result of the experiment of this name, when its runs are on IMDB."""
        if not all(_on_imdb(r.config) for r in self.runs + self.incomplete):
            return None
        return ORIGINAL_RESULTS.get(self.name)

    @property
    def has_results(self) -> bool:
        return bool(self.runs)


#: How ``data`` names the IMDB archive (as rnnlab.data.sources reads it; report/ does not import data).
_IMDB_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _on_imdb(config: dict) -> bool:
    """Whether a run's config trains and tests on IMDB (the default data, the archive or an
    ``aclImdb`` folder, and no own test file): only then is the original's result comparable."""
    data = str(config.get("data") or "")
    if config.get("test_data"):
        return False
    name = data.rstrip("/").lower()
    return data == "" or name.endswith(_IMDB_ARCHIVE_SUFFIXES) or name.rsplit("/", 1)[-1] == "aclimdb"


def _config_signature(run: RunRecord) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in _IGNORED_CONFIG_KEYS))


def summarize(runs: list[RunRecord], order: list[str] | None = None) -> list[ExperimentSummary]:
    """Aggregate runs per experiment name.

    Order: the names in ``order`` first (default: the seven original experiments in suite order),
    then the other recurrent experiments by name, then baselines.
    """
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    order = list(ORIGINAL_RESULTS) if order is None else list(order)

    def sort_key(name: str) -> tuple:
        kind_rank = 1 if any(r.kind == "baseline" for r in groups[name]) else 0
        return (kind_rank, order.index(name) if name in order else len(order), name)

    summaries = []
    for name in sorted(groups, key=sort_key):
        members = sorted(groups[name], key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
        complete = [r for r in members if r.complete]
        s = ExperimentSummary(
            name=name, kind=members[0].kind, runs=complete, incomplete=[r for r in members if not r.complete]
        )
        if complete:
            finals = [r.final_test() for r in complete]
            s.final_acc = Stat.of([f[0] for f in finals])
            best = [r.best_test() for r in complete]
            s.best_acc = Stat.of([b[0] for b in best])
            s.best_epochs = [b[1] for b in best]
            s.final_loss = Stat.of([f[1] for f in finals])
            params = sorted({r.num_params for r in complete if r.num_params is not None})
            s.num_params = params[0] if params else None
            if len(params) > 1:
                s.notes.append(f"parameter counts differ between runs: {params}")
            seconds = [x for r in complete for x in r.column("epoch_seconds")]
            s.epoch_seconds = statistics.median(seconds) if seconds else None
            epochs = sorted({len(r.rows) for r in complete})
            s.epochs = epochs[-1]
            if len({_config_signature(r) for r in complete}) > 1:
                s.notes.append("the runs' configs differ in more than the seed")
            seeds = [r.seed for r in complete]
            if len(set(seeds)) < len(seeds):
                s.notes.append(f"several runs share a seed: {seeds}")
        summaries.append(s)
    return summaries
