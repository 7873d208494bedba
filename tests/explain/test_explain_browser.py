"""The explain page in a real browser: headless Chromium, network off, from disk."""

from __future__ import annotations

import re

from browser_helpers import assert_not_blank, chromium_or_skip, render

from rnnlab._html import page
from rnnlab.explain import explain_texts, open_run, write_explanation


def test_explain_page_renders_in_chromium(make_run, tmp_path):
    chromium_or_skip()
    run = open_run(make_run(cell="lstm", bidirectional=True))
    long_text = " ".join(["the film was very boring"] * 5) + " but the end was great"  # 30 tokens, 20 read
    result = explain_texts(run, ["a great film and a lovely story", long_text])
    out = tmp_path / "out"
    write_explanation(result, out)
    shown = render(out / "explain.html", tmp_path)
    assert 'data-rendered="1"' in shown.dom, shown.page_errors()
    assert shown.page_errors() == "" and shown.console == []
    assert len(re.findall(r'<span class="tok[^"]*" data-pos="', shown.dom)) == 7 + 20  # read tokens
    assert len(re.findall(r'<span class="tok unread" title="not read', shown.dom)) == 10
    assert shown.dom.count('<canvas class="heatmap"') == 4 and shown.dom.count('<canvas class="norms"') == 4
    painted = [int(p) for p in re.findall(r'data-painted="(\d+)"', shown.dom)]
    assert len(painted) == 2 and min(painted) > 500  # the script drew the heatmaps
    assert shown.dom.count("<b>") >= 2 and "attribution <b>" in shown.dom  # a token is selected, its values shown
    assert_not_blank(shown.screenshot)


def test_the_error_collector_sees_script_errors(tmp_path):
    chromium_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text(page("bad", "<p>text</p>", script="notAFunction();\ndocument.body.dataset.rendered = '1';"))
    shown = render(bad, tmp_path, height=400)
    assert "notAFunction is not defined" in shown.page_errors()
    assert 'data-rendered="1"' not in shown.dom
    assert any("notAFunction" in line for line in shown.console)
    remote = tmp_path / "remote.html"
    remote.write_text(
        page("remote", '<img src="https://example.org/x.png">', script="document.body.dataset.rendered = '1';")
    )
    assert "Content Security Policy" in " ".join(render(remote, tmp_path, height=400).console)
