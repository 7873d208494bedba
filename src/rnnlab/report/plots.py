"""Plots of a comparison (matplotlib, no pyplot: figures are plain objects, rendered by Agg).

Each ``plot_*`` function returns a ``matplotlib.figure.Figure`` so that tests can count its
lines and bars; :func:`write_plots` renders them all to PNG files.

Curves show, per experiment, the mean over seeds at each epoch with a shaded band from the
minimum to the maximum over seeds (the band appears when there are two seeds or more).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rnnlab._io import atomic_write
from rnnlab.report.aggregate import ExperimentSummary

_COLORS = [
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
    # then ten more, so that a suite of up to 20 experiments (the variants preset has 15) never
    # gives two experiments the same colour
    "black",
    "gold",
    "navy",
    "lime",
    "teal",
    "maroon",
    "darkviolet",
    "chocolate",
    "slategray",
    "magenta",
]

#: Legends with more entries than this go to the right of the axes, off the curves.
_LEGEND_INSIDE_MAX = 8


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _new_figure(ncols: int = 1, width: float = 7.0, height: float = 4.5) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _curve(s: ExperimentSummary, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, mean, min and max of one metric over the experiment's complete runs."""
    per_epoch: dict[int, list[float]] = {}
    for run in s.runs:
        for row in run.rows:
            if isinstance(row.get(key), (int, float)):
                per_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = sorted(per_epoch)
    vals = [per_epoch[e] for e in epochs]
    return epochs, [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def _draw_curves(ax, summaries: list[ExperimentSummary], key: str, *, linestyle: str = "-") -> None:
    for i, s in enumerate(summaries):
        if not s.has_results or s.kind == "baseline":
            continue
        epochs, mean, lo, hi = _curve(s, key)
        if not epochs:
            continue
        label = s.name if len(s.runs) == 1 else f"{s.name} ({len(s.runs)} seeds)"
        ax.plot(epochs, mean, marker="o", markersize=3, color=_color(i), linestyle=linestyle, label=label)
        if len(s.runs) > 1:
            ax.fill_between(epochs, lo, hi, color=_color(i), alpha=0.18, linewidth=0)
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _legend(ax) -> None:
    """A legend when something is drawn, else a note that there is nothing to show."""
    handles = ax.get_legend_handles_labels()[0]
    if len(handles) > _LEGEND_INSIDE_MAX:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    elif handles:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no complete runs", transform=ax.transAxes, ha="center", va="center", color="gray")


def plot_accuracy(summaries: list[ExperimentSummary], split: str = "test") -> Figure:
    """Accuracy per epoch on ``split`` ("test", "train" or "val"): one line per recurrent experiment.

    On the test plot each baseline is a dashed horizontal line at its test accuracy, and each
    of the original's experiments has its original curve dotted, in the experiment's colour.
    """
    if split not in ("test", "train", "val"):
        raise ValueError(f"split must be 'test', 'train' or 'val', got {split!r}")
    fig, (ax,) = _new_figure()
    _draw_curves(ax, summaries, f"{split}_acc")
    if split == "test":
        drawn = False
        for i, s in enumerate(summaries):  # the original's curve, dotted, for its experiments
            if s.original is not None and s.has_results and s.kind != "baseline":
                n = min(len(s.original.test_acc), max(_curve(s, "test_acc")[0], default=0))
                if n:
                    ax.plot(
                        range(1, n + 1),
                        s.original.test_acc[:n],
                        color=_color(i),
                        linestyle=":",
                        linewidth=1.0,
                        alpha=0.8,
                        label="_original",
                    )
                    drawn = True
        if drawn:
            ax.plot([], [], color="gray", linestyle=":", label="original (dotted, one seed)")
        for i, s in enumerate(summaries):
            if s.kind == "baseline" and s.final_acc is not None:
                ax.axhline(
                    s.final_acc.mean, color=_color(i), linestyle="--", linewidth=1.2, label=f"{s.name} (bag of words)"
                )
    word = {"val": "validation"}.get(split, split)
    ax.set_ylabel(f"{word} accuracy")
    ax.set_title(f"{word.capitalize()} accuracy per epoch (mean over seeds, band: min..max)")
    _legend(ax)
    return fig


def plot_loss(summaries: list[ExperimentSummary]) -> Figure:
    """Train loss (left) and test loss (right) per epoch, one line per recurrent experiment.

    When no run has a per-epoch test loss (every run tested once, ``test_every_epoch = false``),
    the right panel shows the validation loss instead, and says so.
    """
    fig, (ax_train, ax_test) = _new_figure(ncols=2, width=6.0)
    _draw_curves(ax_train, summaries, "train_loss")
    per_epoch_test = any(
        "test_loss" in row for s in summaries if s.kind != "baseline" for r in s.runs for row in r.rows
    )
    split = "test" if per_epoch_test or not _has_validation(summaries) else "validation"
    _draw_curves(ax_test, summaries, "test_loss" if split == "test" else "val_loss")
    ax_train.set_ylabel("train loss")
    ax_train.set_title("Train loss per epoch")
    ax_test.set_ylabel(f"{split} loss")
    ax_test.set_title(f"{split.capitalize()} loss per epoch")
    _legend(ax_test)
    return fig


def _barh(ax, names: list[str], values: list[float], errors: list[float], colors: list[str], fmt: str) -> None:
    ys = list(range(len(names)))
    # A single seed has no spread: no error bar (NaN draws nothing), rather than a zero-width one.
    xerr = [e if e > 0 else float("nan") for e in errors] if any(errors) else None
    ax.barh(ys, values, xerr=xerr, color=colors, capsize=3, height=0.6)
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()  # first experiment on top
    ax.grid(True, axis="x", alpha=0.3)
    for y, v, e in zip(ys, values, errors):
        ax.annotate(format(v, fmt), (v + e, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)


def plot_best_accuracy(summaries: list[ExperimentSummary]) -> Figure:
    """Best test accuracy per experiment (mean over seeds), error bars ±1 sample std."""
    rows = [(i, s) for i, s in enumerate(summaries) if s.best_acc is not None]
    fig, (ax,) = _new_figure(height=0.8 + 0.42 * max(len(rows), 1))
    values = [s.best_acc.mean for _, s in rows]
    errors = [s.best_acc.std or 0.0 for _, s in rows]
    _barh(ax, [s.name for _, s in rows], values, errors, [_color(i) for i, _ in rows], ".4f")
    # the original's best test accuracy over the same number of epochs
    originals = [
        (y, s.original.at(s.epochs)[1])
        for y, (_, s) in enumerate(rows)
        if s.original is not None and s.original.at(s.epochs) is not None
    ]
    if values:
        extra = [v for _, v in originals]
        lo = min([v - e for v, e in zip(values, errors)] + extra)
        hi = max([v + e for v, e in zip(values, errors)] + extra)
        span = max(hi - lo, 0.01)
        ax.set_xlim(max(0.0, lo - 0.5 * span), min(1.0, hi + 0.35 * span) if hi < 1 else 1.0)
    if originals:
        ax.plot(
            [v for _, v in originals],
            [y for y, _ in originals],
            linestyle="none",
            marker="|",
            markersize=14,
            markeredgewidth=2,
            color="black",
            label="original (one seed)",
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("best test accuracy (error bars: ±1 std over seeds; axis does not start at 0)")
    ax.set_title("Best test accuracy")
    return fig


def plot_epoch_seconds(summaries: list[ExperimentSummary]) -> Figure:
    """Median seconds per epoch of each recurrent experiment (baselines have no epochs)."""
    rows = [(i, s) for i, s in enumerate(summaries) if s.epoch_seconds is not None and s.kind != "baseline"]
    fig, (ax,) = _new_figure(height=0.8 + 0.42 * max(len(rows), 1))
    values = [s.epoch_seconds for _, s in rows]
    _barh(ax, [s.name for _, s in rows], values, [0.0] * len(rows), [_color(i) for i, _ in rows], ".1f")
    if values:
        ax.set_xlim(0, max(values) * 1.15)
    ax.set_xlabel("seconds per epoch, training pass (median over epochs and seeds)")
    ax.set_title("Training time per epoch")
    return fig


#: File name -> function that draws it.
PLOTS: dict[str, Callable[[list[ExperimentSummary]], Figure]] = {
    "test_accuracy.png": lambda s: plot_accuracy(s, "test"),
    "train_accuracy.png": lambda s: plot_accuracy(s, "train"),
    "loss.png": plot_loss,
    "best_test_accuracy.png": plot_best_accuracy,
    "epoch_seconds.png": plot_epoch_seconds,
}


def _has_validation(summaries: list[ExperimentSummary]) -> bool:
    return any("val_acc" in row for s in summaries for r in s.runs for row in r.rows)


def write_plots(summaries: list[ExperimentSummary], out_dir: Path) -> list[Path]:
    """Render every plot in :data:`PLOTS` into ``out_dir`` (each file written atomically), and
    ``val_accuracy.png`` when some run has a validation split."""
    written = []
    plots = dict(PLOTS)
    if _has_validation(summaries):
        plots["val_accuracy.png"] = lambda s: plot_accuracy(s, "val")
    for filename, draw in plots.items():
        fig = draw(summaries)
        path = Path(out_dir) / filename
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
        written.append(path)
    return written
