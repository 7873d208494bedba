"""``rnnlab report ... --html``: the comparison report as one self-contained page, ``results.html``.

The page holds what ``results.md`` holds (the results table, notes, settings table, plots,
each image embedded as a ``data:`` URI) plus a section of per-run curves: for every
experiment, each run's (seed's) test accuracy and training loss per epoch, one line per run,
and a table of its rows. Built from :func:`rnnlab.report.build.write_report`'s ``Report``; the
markdown is converted by the small subset reader below (headings, paragraphs, pipe tables,
lists, images, ``code``, ``*emphasis*``), which is all that ``render_markdown`` writes.
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rnnlab._html import escape, page, png_data_uri
from rnnlab._io import write_text
from rnnlab.report.aggregate import ExperimentSummary

__all__ = ["markdown_to_html", "per_run_figure", "write_html_report"]

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Escape, then ``code``, **strong**, *emphasis* and [links](url) (links kept as text only)."""
    out = escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<i>\1</i>", out)
    return re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", out)


def _table(lines: list[str]) -> str:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    head, body = rows[0], [r for r in rows[2:]]
    align = ["num" if cell.strip().endswith(":") else "" for cell in rows[1]]
    th = "".join(f"<th>{_inline(c)}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f'<td class="{a}">{_inline(c)}</td>' for c, a in zip(r, align + [""] * len(r))) + "</tr>"
        for r in body
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def markdown_to_html(markdown: str, images: dict[str, bytes]) -> str:
    """The markdown that ``render_markdown`` writes, as HTML; ``images`` maps a file name to PNG
    bytes (embedded); an image not in it is shown as its alt text."""
    blocks, para = [], []
    lines = markdown.splitlines()

    def flush() -> None:
        if para:
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            flush()
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j]))
            i = j
            continue
        m = re.match(r"(#{1,4}) (.*)", line)
        if m:
            flush()
            level = len(m.group(1))
            blocks.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif _IMAGE.fullmatch(line.strip()):
            flush()
            alt, name = _IMAGE.fullmatch(line.strip()).groups()
            if name in images:
                blocks.append(f'<img class="plot" alt="{escape(alt)}" src="{png_data_uri(images[name])}">')
            else:
                blocks.append(f'<p class="muted">({escape(alt)}: not available)</p>')
        elif line.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    return "\n".join(blocks)


def per_run_figure(summary: ExperimentSummary) -> Figure:
    """Test accuracy and training loss per epoch of each complete run of one experiment."""
    fig = Figure(figsize=(9.0, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    acc, loss = fig.subplots(1, 2)
    for k, run in enumerate(summary.runs):
        rows = [r for r in run.rows if isinstance(r.get("epoch"), int)]
        label = f"seed {run.seed}" if run.seed is not None else run.path.name
        for ax, key in ((acc, "test_acc"), (loss, "train_loss")):
            pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, color=f"C{k % 10}", label=label)
    for ax, title in ((acc, "test accuracy"), (loss, "training loss")):
        ax.set_title(f"{summary.name}: {title}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def _png(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _per_run_section(summaries: list[ExperimentSummary]) -> str:
    parts = ["<h2>Per-run curves</h2>"]
    for s in summaries:
        if s.kind == "baseline" or not s.runs:
            continue
        parts.append(f'<h3 class="experiment">{escape(s.name)}</h3>')
        parts.append(
            f'<img class="plot curves" alt="{escape(s.name)} per run" src="{png_data_uri(_png(per_run_figure(s)))}">'
        )
        for run in s.runs:
            keys = [
                k
                for k in ("epoch", "train_loss", "train_acc", "val_acc", "test_loss", "test_acc")
                if any(k in r for r in run.rows)
            ]
            head = "".join(f"<th>{k}</th>" for k in keys)
            body = "".join(
                "<tr>" + "".join(f'<td class="num">{_cell(r.get(k))}</td>' for k in keys) + "</tr>" for r in run.rows
            )
            parts.append(
                f"<details><summary><code>{escape(run.path)}</code> ({len(run.rows)} epochs)</summary>"
                f'<table class="run"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>'
            )
    return "\n".join(parts)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else escape(value)


def write_html_report(report: object, out_dir: str | Path, *, title: str = "rnnlab comparison") -> Path:
    """Write ``out_dir/results.html`` for a ``Report`` that ``write_report`` just wrote there."""
    out = Path(out_dir)
    images = {p.name: p.read_bytes() for p in out.glob("*.png")}
    body = markdown_to_html(report.markdown, images) + _per_run_section(report.summaries)
    script = """window.addEventListener("load", function () {
  var loaded = 0;
  document.querySelectorAll("img").forEach(function (img) { if (img.complete && img.naturalWidth > 0) loaded++; });
  document.body.dataset.imagesLoaded = String(loaded);
  document.body.dataset.rendered = "1";
});"""
    path = out / "results.html"
    css = "table { display: block; overflow-x: auto; max-width: 100%; } details { margin: 4px 0 4px 12px; }"
    write_text(path, page(title, body, css=css, script=script))
    return path
