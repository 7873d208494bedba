"""rnnlab report --html: one self-contained page with the report's tables, plots and per-run curves."""

from __future__ import annotations

import re

from browser_helpers import assert_not_blank, chromium_or_skip, render
from report_helpers import make_run

from rnnlab.cli import main
from rnnlab.report import write_report
from rnnlab.report.html import markdown_to_html, per_run_figure, write_html_report


def _runs(tmp_path):
    make_run(tmp_path / "runs", "lstm", 0, [0.70, 0.80, 0.84])
    make_run(tmp_path / "runs", "lstm", 1, [0.72, 0.79, 0.85])
    make_run(tmp_path / "runs", "rnn", 0, [0.60, 0.70, 0.74], config={"cell": "rnn"})
    make_run(tmp_path / "runs", "gru", 0, [0.60], status="running", epochs=3)
    return tmp_path / "runs"


def test_report_html_holds_tables_plots_and_per_run_curves(tmp_path, capsys):
    runs = _runs(tmp_path)
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--html", "--title", "My <comparison>"]) == 0
    assert str(out / "results.html") in capsys.readouterr().out
    page = (out / "results.html").read_text()
    assert "<title>My &lt;comparison&gt;</title>" in page and "<h1>My &lt;comparison&gt;</h1>" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # every image embedded, no link out
    n_plots = len(list(out.glob("*.png")))
    assert page.count('<img class="plot" ') == n_plots
    assert page.count('<img class="plot curves"') == 2  # lstm and rnn; the incomplete gru has no curves
    assert page.count("<details>") == 3  # one table per complete run
    assert "0.8450" in page  # the lstm's mean final test accuracy in the results table
    assert "1 incomplete" in page  # the gru run still running


def test_per_run_figure_has_one_line_per_run(tmp_path):
    report = write_report([_runs(tmp_path)], tmp_path / "r")
    lstm = next(s for s in report.summaries if s.name == "lstm")
    fig = per_run_figure(lstm)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    assert list(fig.axes[0].lines[1].get_ydata()) == [0.72, 0.79, 0.85]


def test_markdown_subset():
    html = markdown_to_html(
        "# T\n\nsome *final* `code` text\nwrapped\n\n| a | b |\n|---|---:|\n| x | 1.5 |\n\n- one\n- two\n\n![missing](m.png)\n",
        {},
    )
    assert "<h1>T</h1>" in html and "<p>some <i>final</i> <code>code</code> text wrapped</p>" in html
    assert '<td class="">x</td><td class="num">1.5</td>' in html and "<ul><li>one</li><li>two</li></ul>" in html
    assert "(missing: not available)" in html


def test_report_html_renders_in_chromium(tmp_path):
    chromium_or_skip()
    runs = _runs(tmp_path)
    out = tmp_path / "report"
    report = write_report([runs], out)
    path = write_html_report(report, out)
    shown = render(path, tmp_path, height=2400)
    assert 'data-rendered="1"' in shown.dom and shown.page_errors() == "" and shown.console == []
    images = shown.dom.count('<img class="plot')
    assert shown.dom.count("<table") >= 5 and images >= 7
    assert f'data-images-loaded="{images}"' in shown.dom  # every embedded image decoded
    assert_not_blank(shown.screenshot)
