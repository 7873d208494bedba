"""How long a comparison has left: measured epoch times, model sizes and the schedule on N slots."""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any


def fmt_duration(seconds: float) -> str:
    """``1h02m03s``, ``4m05s`` or ``6s``."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def recurrent_cost(config: Any) -> float:
    """Multiply-adds per token of the recurrent layers: sum over layers and directions of G H (H_in + H).

    G = 1 (RNN), 3 (GRU), 4 (LSTM); H_in = embedding_dim for the first layer, else H times the
    number of directions.
    """
    gates = {"rnn": 1, "gru": 3, "lstm": 4}.get(config.cell, 4)
    dirs = 2 if config.bidirectional else 1
    h = config.hidden_size
    total = 0.0
    for layer in range(config.num_layers):
        h_in = config.embedding_dim if layer == 0 else h * dirs
        total += dirs * gates * h * (h_in + h)
    return total


def work_estimate(config: Any, done_epochs: int) -> float:
    """Relative work left in a run, for the start order of ``--jobs``: recurrent multiply-adds per
    token x tokens per example (max_len) x epochs left (same train split size for every run)."""
    return recurrent_cost(config) * config.max_len * max(0, config.epochs - done_epochs)


def greedy_finish(running: list[float], queued: list[float], slots: int) -> float:
    """Seconds until all work is done on ``slots`` parallel slots (list scheduling, in queue order).

    running: seconds left of the runs already on a slot; queued: estimated seconds of each run
    still to start, started in order on the first slot to free up. Returns the latest finish.
    """
    free = sorted(running)[:slots] + [0.0] * max(0, slots - len(running))
    heapq.heapify(free)
    for seconds in queued:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free) if free else 0.0


class Eta:
    """Estimates the time left from measured epoch times.

    An experiment's remaining epochs are costed at the median of its own measured seconds per
    epoch (over all its runs). An experiment not measured yet is costed from the measured ones,
    each scaled by sqrt(cost ratio) with cost = the recurrent multiply-adds per token
    (:func:`recurrent_cost`), averaged; sqrt because fixed costs (embedding, head, data,
    per-step overhead) do not grow with the cell (on the seed suite, 1 epoch each, within 30%, where
    a plain average missed the 128-wide LSTM by 3x). So the estimate is rough until every
    experiment has run one epoch.
    """

    def __init__(self, costs: Mapping[str, float] | None = None) -> None:
        self.costs = dict(costs or {})  # experiment -> recurrent_cost of its config
        self.seconds: dict[str, dict[str, list[float]]] = {}  # experiment -> run -> epoch seconds
        self.wall = 0.0  # wall-clock seconds of the finished train_and_evaluate calls
        self.trained = 0.0  # the epoch_seconds (training passes only) of those calls

    def add_call(self, wall: float, rows_trained: Iterable[Mapping[str, Any]]) -> None:
        """Record a finished call: the ratio wall / training time covers evaluation and set-up."""
        self.wall += wall
        self.trained += sum(float(r.get("epoch_seconds") or 0.0) for r in rows_trained)

    def add(self, name: str, rows: Iterable[Mapping[str, Any]], run: str = "") -> None:
        """Record (or replace) the epoch times of one run of experiment ``name``."""
        vals = [float(r["epoch_seconds"]) for r in rows if isinstance(r.get("epoch_seconds"), (int, float))]
        if vals:
            self.seconds.setdefault(name, {})[run] = vals

    def _guess(self, name: str, medians: Mapping[str, float]) -> float:
        """Seconds per epoch of an unmeasured experiment (see the class docstring)."""
        if name in self.costs and all(m in self.costs for m in medians):
            return statistics.fmean(v * math.sqrt(self.costs[name] / self.costs[m]) for m, v in medians.items())
        return statistics.fmean(medians.values())

    def _rates(self, names: set[str]) -> tuple[dict[str, float], str]:
        """Estimated wall seconds per epoch of each of ``names`` (set-up factor included), and how."""
        per_name = {n: [x for v in runs.values() for x in v] for n, runs in self.seconds.items()}
        medians = {n: statistics.median(v) for n, v in per_name.items()}
        guessed = {n for n in names if n not in medians}
        rates = {n: medians[n] if n in medians else self._guess(n, medians) for n in names}
        how = f"from {sum(len(v) for v in per_name.values())} measured epochs"
        if self.trained > 0 and self.wall > self.trained:
            factor = self.wall / self.trained
            rates = {n: v * factor for n, v in rates.items()}
            how += f", x{factor:.2f} for evaluation and set-up"
        else:
            how += ", training passes only"
        if guessed:
            scaled = all(n in self.costs for n in guessed) and all(n in self.costs for n in medians)
            how += f"; {len(guessed)} experiment(s) not measured yet, " + (
                "scaled from the measured ones by model size" if scaled else "assumed at the average speed"
            )
        return rates, how

    def estimate(self, pending: list[tuple[str, int]]) -> tuple[float | None, str]:
        """Seconds left for ``pending`` (experiment name, epochs to run), and how it was estimated."""
        if not any(e > 0 for _, e in pending):
            return 0.0, "nothing left"
        if not self.seconds:
            return None, "no epoch measured yet"
        rates, how = self._rates({n for n, e in pending if e > 0})
        return sum(e * rates[n] for n, e in pending if e > 0), how

    def schedule(
        self, running: list[tuple[str, int]], queued: list[tuple[str, int]], slots: int
    ) -> tuple[float | None, str]:
        """Seconds left when ``slots`` runs go at once: runs on a slot (name, epochs left) finish their
        epochs, queued runs start in order on the first slot to free up (list scheduling)."""
        if not any(e > 0 for _, e in [*running, *queued]):
            return 0.0, "nothing left"
        if not self.seconds:
            return None, "no epoch measured yet"
        rates, how = self._rates({n for n, e in [*running, *queued] if e > 0})
        secs = greedy_finish(
            [e * rates[n] for n, e in running if e > 0], [e * rates[n] for n, e in queued if e > 0], slots
        )
        return secs, f"{slots} runs at a time, {how}"
