"""``rnnlab report``: run directories in, ``results.md``, ``results.csv`` and plots out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rnnlab import __version__
from rnnlab._io import write_text
from rnnlab.report.aggregate import ExperimentSummary, summarize
from rnnlab.report.plots import PLOTS, write_plots
from rnnlab.report.runs import ReportError, discover_runs, read_run
from rnnlab.report.tables import csv_table, markdown_table
from rnnlab.rundir import ComparisonDir

#: Config fields shown in the settings table, in order.
SETTINGS = (
    "cell",
    "encoder",
    "embedding_dim",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "pooling",
    "loss",
    "optimizer",
    "lr",
    "lr_schedule",
    "batch_size",
    "epochs",
    "max_len",
    "truncate",
    "max_words",
    "embedding_dropout",
    "word_dropout",
)
#: Values of settings that runs made before the key existed had (their config.toml lacks the key).
LATER_KEYS = {"word_dropout": 0.0}
#: The last column, "options": the rnnlab.nn cell options and wide-part keys a run changed (``layer_norm=True,
#: weight_drop=0.3``), "none" when all are at their defaults (also for runs made before them).
#: Their defaults are ``rnnlab.train.config.LAYER_OPTIONS`` (repeated here: the report side
#: imports no torch; a test checks that the two agree).
OPTIONS_COLUMN = "options"
LAYER_OPTIONS = {
    "layer_norm": False,
    "recurrent_dropout": 0.0,
    "zoneout": 0.0,
    "weight_drop": 0.0,
    "peephole": False,
    "gate_activation": "sigmoid",
    "activation": "tanh",
}

#: The wide part's keys (``rnnlab.train.config.WIDE_KEYS``) and their defaults, shown in the same
#: column when changed (``wide_ngrams=3, wide_min_count=2, deep_loss_weight=1.0``).
WIDE_OPTIONS = {
    "wide_ngrams": 0,
    "wide_min_count": 1,
    "wide_alpha": 1.0,
    "wide_init": 0.0,
    "wide_dropout": 0.0,
    "wide_lr": 0.0,
    "wide_weight_decay": 0.0,
    "deep_loss_weight": 0.0,
}


def _options_cell(cfg: dict) -> str:
    shown = {**LAYER_OPTIONS, **WIDE_OPTIONS}
    on = [f"{key}={cfg[key]}" for key, default in shown.items() if cfg.get(key, default) != default]
    return ", ".join(on) or "none"


#: Settings whose key was renamed: the new key -> the old one, read from runs made before the rename.
OLD_KEYS = {"encoder": "impl"}


@dataclass
class Report:
    summaries: list[ExperimentSummary]
    files: list[Path]
    markdown: str


def _settings_table(summaries: list[ExperimentSummary]) -> str:
    rows = []
    for s in summaries:
        runs = s.runs or s.incomplete
        if s.kind == "baseline" or not runs or not runs[0].config:
            continue
        cfg = runs[0].config
        values = [str(cfg.get(k, cfg.get(OLD_KEYS.get(k, ""), LATER_KEYS.get(k, "")))) for k in SETTINGS]
        rows.append("| " + " | ".join([f"`{s.name}`", *values, _options_cell(cfg)]) + " |")
    if not rows:
        return ""
    columns = (*SETTINGS, OPTIONS_COLUMN)
    head = "| experiment | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    return head + "\n".join(rows) + "\n"


def _baseline_lines(summaries: list[ExperimentSummary]) -> list[str]:
    lines = []
    for s in summaries:
        if s.kind == "baseline" and s.runs:
            desc = s.runs[0].info.get("description")
            if desc:
                lines.append(f"- `{s.name}`: {desc}")
    return lines


def render_markdown(
    summaries: list[ExperimentSummary], sources: list[str], title: str = "rnnlab comparison", intro: str = ""
) -> str:
    n_runs = sum(len(s.runs) + len(s.incomplete) for s in summaries)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"# {title}\n",
        f"{n_runs} runs of {len(summaries)} experiments from {', '.join(f'`{p}`' for p in sources)}; "
        f"written by rnnlab {__version__} on {stamp}.\n",
        *([intro.rstrip() + "\n"] if intro else []),
        markdown_table(summaries),
        "*final*: test accuracy after the last epoch; *best*: the highest test accuracy over the epochs "
        "(the epoch of each seed in parentheses). The best epoch is picked on the test set, so *best* is an "
        "optimistic figure, shown because the original reported it. Values are mean ± sample standard "
        "deviation (ddof = 1) over seeds. "
        + (
            "*original*: the single-seed result of the original assignment after the same number of epochs, "
            "final (best); *Δ final*: mean final accuracy minus the original's, in percentage points. "
            if any(s.original for s in summaries)
            else ""
        )
        + "*s/epoch*: median wall-clock seconds of an epoch's training pass (`epoch_seconds` in metrics.jsonl; "
        "evaluation not included), over all epochs and seeds.\n",
    ]
    baselines = _baseline_lines(summaries)
    if baselines:
        parts.append("Baselines:\n\n" + "\n".join(baselines) + "\n")
    settings = _settings_table(summaries)
    if settings:
        parts.append("## Settings\n\n" + settings)
    parts.append("## Plots\n\n" + "\n\n".join(f"![{name[:-4].replace('_', ' ')}]({name})" for name in PLOTS) + "\n")
    return "\n".join(parts)


def write_report(
    paths: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    order: list[str] | None = None,
    title: str = "rnnlab comparison",
    intro: str = "",
) -> Report:
    """Discover the run directories under ``paths``, aggregate them and write the report into ``out_dir``.

    Writes ``results.md``, ``results.csv`` and the PNG files of :data:`rnnlab.report.plots.PLOTS`
    (each atomically); other files in ``out_dir`` are left alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; expected a folder for results.md, results.csv and the plots")
    runs = [read_run(p) for p in discover_runs(list(paths))]
    if order is None:  # a comparison folder knows its suite's order
        order = [n for p in paths for n in ComparisonDir(p).experiment_order()] or None
    summaries = summarize(runs, order=order)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(summaries, [str(p) for p in paths], title=title, intro=intro)
    write_text(out / "results.csv", csv_table(summaries))
    files = [out / "results.csv"] + write_plots(summaries, out)
    write_text(out / "results.md", markdown)  # last: its presence means the report is whole
    files.append(out / "results.md")
    return Report(summaries, files, markdown)
