"""PNG figures of ``rnnlab explain`` (attributions, gate heatmaps) and ``rnnlab study gradients``
(connectivity, gate saturation), as matplotlib Figures (no pyplot), rendered by Agg.

Each ``*_figure`` function returns a ``Figure`` (tests count its lines and points);
:func:`save_png` writes one atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rnnlab._io import write_bytes

#: Line colour per cell, line style per pooling (the study's figures).
CELL_COLORS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}
POOLING_STYLES = {"last": "-", "mean": "--", "max": ":", "meanmax": "-."}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_png(fig: Figure, path: Path) -> Path:
    write_bytes(path, png_bytes(fig))
    return path


def _read_tokens(text: dict[str, Any]) -> list[str]:
    return [t["token"] for t in sorted((t for t in text["tokens"] if t["read"]), key=lambda t: t["position"])]


def _token_axis(ax, tokens: list[str]) -> None:
    step = max(1, len(tokens) // 60)  # at most ~60 labels
    ax.set_xticks(range(0, len(tokens), step))
    ax.set_xticklabels(tokens[::step], rotation=90, fontsize=7)


def attribution_figure(text: dict[str, Any]) -> Figure:
    """Bar per read token: its attribution (green towards the prediction, red against)."""
    tokens = _read_tokens(text)
    values = [t["attribution"] for t in sorted((t for t in text["tokens"] if t["read"]), key=lambda t: t["position"])]
    fig = _figure(max(6.0, min(18.0, 0.12 * len(tokens) + 3)), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(values)), values, color=["tab:green" if v >= 0 else "tab:red" for v in values], width=0.85)
    ax.axhline(0, color="black", linewidth=0.6)
    _token_axis(ax, tokens)
    ax.set_ylabel("attribution")
    ax.set_title(
        f"Integrated Gradients towards {text['label']} (p = {text['probability']:.3f}); "
        f"sum {text['attribution_sum']:+.3f}, delta {text['delta']:+.1e}",
        fontsize=9,
    )
    return fig


def gates_figure(text: dict[str, Any], layer: dict[str, Any], cell: str) -> Figure:
    """One heatmap per gate (rows: units, columns: read tokens), then ||h|| and ||c|| per token."""
    tokens = _read_tokens(text)
    gates = list(layer["gates"])
    fig = _figure(max(6.0, min(18.0, 0.12 * len(tokens) + 3)), 1.6 * len(gates) + 2.2)
    axes = fig.subplots(len(gates) + 1, 1, sharex=True, squeeze=False)[:, 0]
    for ax, g in zip(axes, gates):
        values = np.asarray(layer["gates"][g]).T  # (H, T)
        sigmoid = g not in ("g", "n")
        im = ax.imshow(
            values,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis" if sigmoid else "RdBu_r",
            vmin=0.0 if sigmoid else -1.0,
            vmax=1.0,
        )
        ax.set_ylabel(f"{g}\nunit", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    ax = axes[-1]
    ax.plot(layer["h_norm"], label="‖h‖", color="tab:blue")
    if layer["c_norm"] is not None:
        ax.plot(layer["c_norm"], label="‖c‖", color="tab:red")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("norm", fontsize=8)
    _token_axis(ax, tokens)
    axes[0].set_title(f"{cell.upper()} {layer['name']}: gate activations per unit and token", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- the gradient study

_GATE_ORDER = ("i", "f", "o", "r", "z")
_GATE_TITLES = {
    "i": "LSTM input gate i",
    "f": "LSTM forget gate f",
    "o": "LSTM output gate o",
    "r": "GRU reset gate r",
    "z": "GRU update gate z",
}


def _run_label(run: dict[str, Any]) -> str:
    return f"{run['name']} ({run['cell'].upper()}, {run['pooling']} pooling)"


def _style(run: dict[str, Any], index: int) -> dict[str, Any]:
    color = CELL_COLORS.get(run["cell"], f"C{index % 10}")
    return {"color": color, "linestyle": POOLING_STYLES.get(run["pooling"], "-")}


def _connectivity_axes(ax, runs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    """Lines of mean gradient norm against distance (log y); runs: (label, connectivity, style)."""
    for label, c, style in runs:
        d = [x for x, n in zip(c["distance"], c["count"]) if n > 0]
        y = [v for v, n in zip(c["mean_norm"], c["count"]) if n > 0]
        ax.plot(d, y, label=label, linewidth=1.4, **style)
    ax.set_yscale("log")
    ax.set_xlabel("distance from the end of the review (tokens)")
    ax.set_ylabel("mean ‖∂ logit / ∂ embedding‖")
    ax.grid(True, alpha=0.3, which="both")


def connectivity_figure(runs: list[dict[str, Any]]) -> Figure:
    """Every run's final connectivity curve on one axes (colour: cell; line style: pooling)."""
    fig = _figure(8.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    lines = [(_run_label(r), r["final"]["connectivity"], _style(r, i)) for i, r in enumerate(runs)]
    _connectivity_axes(ax, lines)
    n = runs[0]["examples"] if runs else 0
    ax.set_title(
        f"Gradient connectivity: how strongly the prediction depends on each position ({n} test reviews)", fontsize=9
    )
    ax.legend(fontsize=8)
    return fig


def memory_figure(runs: list[dict[str, Any]]) -> Figure:
    """The gated runs' direct memory path against distance: the median over reviews of the best
    unit's product of forget (LSTM) or update (GRU) gates."""
    fig = _figure(8.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(runs):
        m = r["final"].get("memory")
        if not m:
            continue
        style = _style(r, i)
        ax.plot(
            m["distance"],
            m["median_max_gain"],
            label=f"{_run_label(r)}: max over units of ∏ {m['gate']}",
            linewidth=1.6,
            **style,
        )
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-30, top=2.0)
    ax.set_xlabel("distance from the end of the review (tokens)")
    ax.set_ylabel("gain of the direct path (median over reviews)")
    ax.grid(True, alpha=0.3, which="both")
    ax.set_title("The cell's direct memory path: what a unit keeps of its state after d steps", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no LSTM or GRU run", transform=ax.transAxes, ha="center", va="center", color="gray")
    return fig


def _gates_present(runs: list[dict[str, Any]], key: str = "final") -> list[str]:
    found = set()
    for r in runs:
        measures = [r[key]] if key == "final" else r.get("epochs", [])
        for m in measures:
            for gates in m["saturation"].values():
                found.update(gates)
    return [g for g in _GATE_ORDER if g in found]


def _saturation_axes(ax, points: list[tuple[str, dict[str, Any], dict[str, Any]]], gate: str) -> None:
    """Scatter of (fraction < LOW, fraction > HIGH) per unit; points: (label, saturation, style)."""
    for label, saturation, style in points:
        for layer_name, gates in saturation.items():
            if gate in gates:
                filled = style["linestyle"] == "-"  # last pooling: filled circles; others: open triangles
                ax.scatter(
                    gates[gate]["low"],
                    gates[gate]["high"],
                    s=12 if filled else 16,
                    alpha=0.6 if filled else 0.9,
                    color=style["color"] if filled else "none",
                    edgecolors=style["color"],
                    marker="o" if filled else "^",
                    label=f"{label} {layer_name}" if len(saturation) > 1 else label,
                )
    ax.plot([0, 1], [1, 0], color="gray", linewidth=0.6, linestyle=":")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)


def saturation_figure(runs: list[dict[str, Any]]) -> Figure:
    """One scatter per sigmoid gate type: every unit's left- against right-saturated fraction."""
    gates = _gates_present(runs)
    fig = _figure(3.4 * max(1, len(gates)), 3.9)
    if not gates:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no LSTM or GRU run: no gates", ha="center", va="center", color="gray")
        ax.set_axis_off()
        return fig
    points = [(_run_label(r), r["final"]["saturation"], _style(r, i)) for i, r in enumerate(runs)]
    for k, g in enumerate(gates):
        ax = fig.add_subplot(1, len(gates), k + 1)
        _saturation_axes(ax, points, g)
        ax.set_title(_GATE_TITLES[g], fontsize=9)
        ax.set_xlabel("fraction of steps < 0.1", fontsize=8)
        if k == 0:
            ax.set_ylabel("fraction of steps > 0.9", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper right")
    return fig


def _epoch_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(k / max(1, n - 1)) for k in range(n)]


def connectivity_over_training_figure(runs: list[dict[str, Any]]) -> Figure:
    """One axes per run: its connectivity curve at every per-epoch checkpoint (epoch 0: initialisation)."""
    cols = min(3, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig = _figure(4.6 * cols, 3.6 * rows)
    for k, r in enumerate(runs):
        ax = fig.add_subplot(rows, cols, k + 1)
        epochs = r.get("epochs", [])
        colors = _epoch_colors(len(epochs))
        lines = [(f"epoch {e['epoch']}", e["connectivity"], {"color": c}) for e, c in zip(epochs, colors)]
        _connectivity_axes(ax, lines)
        ax.set_title(_run_label(r), fontsize=9)
        ax.legend(fontsize=6)
    return fig


def saturation_over_training_figure(runs: list[dict[str, Any]]) -> Figure:
    """Rows: runs with gates; columns: per-epoch checkpoints; each panel: every sigmoid gate's units
    as (fraction < 0.1, fraction > 0.9), one colour per gate type."""
    gated = [r for r in runs if _gates_present([r], key="epochs")]
    cols = max((len(r.get("epochs", [])) for r in gated), default=1)
    fig = _figure(2.4 * cols, 2.6 * max(1, len(gated)))
    if not gated:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no LSTM or GRU run: no gates", ha="center", va="center", color="gray")
        ax.set_axis_off()
        return fig
    gate_colors = {"i": "tab:purple", "f": "tab:blue", "o": "tab:orange", "r": "tab:brown", "z": "tab:green"}
    for row, r in enumerate(gated):
        for col, e in enumerate(r["epochs"]):
            ax = fig.add_subplot(len(gated), cols, row * cols + col + 1)
            for g in _GATE_ORDER:
                for gates in e["saturation"].values():
                    if g in gates:
                        ax.scatter(gates[g]["low"], gates[g]["high"], s=5, alpha=0.6, color=gate_colors[g], label=g)
            ax.plot([0, 1], [1, 0], color="gray", linewidth=0.5, linestyle=":")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=6)
            ax.set_title(f"{r['name']}, epoch {e['epoch']}", fontsize=8)
            if row == len(gated) - 1:
                ax.set_xlabel("< 0.1", fontsize=7)
            if col == 0:
                ax.set_ylabel("> 0.9", fontsize=7)
                handles, labels = ax.get_legend_handles_labels()
                unique = dict(zip(labels, handles))
                ax.legend(unique.values(), unique.keys(), fontsize=6, loc="upper right")
    return fig
