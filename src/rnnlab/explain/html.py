"""The ``rnnlab explain`` page: one self-contained HTML file drawn from :func:`explain_texts`'s dict.

Per text: the prediction; the tokens coloured by their Integrated Gradients attribution (green:
towards the predicted label, red: against it; grey and struck through: not read, beyond
``max_len``; dotted underline: unknown to the vocabulary, read as ``<unk>``); for each (layer,
direction) a heatmap of every gate unit (rows) at every read token (columns) and a plot of
||h|| and ||c||. Hovering or clicking a token, or hovering a heatmap column, selects that token:
its values are listed below the text and its column is marked on the heatmaps.

The tokens are written as HTML (readable without scripts); the heatmaps are drawn by the page's
script from the numbers embedded in it as JSON.
"""

from __future__ import annotations

from typing import Any

from rnnlab._html import escape, json_script, page

__all__ = ["render_explanation"]

#: |delta| above this fraction of |F(x) - F(x')| gets a warning on the page.
DELTA_WARN = 0.05

_CSS = """
.textsec { border-top: 2px solid #eaeef2; margin-top: 22px; padding-top: 6px; }
.pred { font-size: 16px; margin: 6px 0; } .pred b { font-size: 18px; }
.tokens { line-height: 2.0; font-size: 15px; margin: 10px 0; padding: 10px; border: 1px solid #eaeef2;
          border-radius: 6px; }
.tok { padding: 2px 1px; border-radius: 3px; cursor: pointer; }
.tok.unk { text-decoration: underline dotted #555; }
.tok.unread { color: #8c959f; text-decoration: line-through; cursor: default; }
.tok.sel { outline: 2px solid #0969da; }
.warn { color: #9a6700; background: #fff8c5; padding: 4px 8px; border-radius: 4px; }
.legend span { padding: 1px 6px; border-radius: 3px; margin-right: 6px; }
.layer { margin: 14px 0; } .layer h3 { margin: 6px 0 2px; }
.mapwrap { position: relative; width: fit-content; margin: 2px 0; }
.marker { position: absolute; top: 0; bottom: 0; border-left: 1px solid #000; border-right: 1px solid #000;
          pointer-events: none; display: none; }
canvas { display: block; }
.details { min-height: 3em; margin: 8px 0; }
"""

_SCRIPT = r"""
"use strict";
var DATA = JSON.parse(document.getElementById("explain-data").textContent);
var LABEL_W = 34;   // px left of the heatmap for the gate names

function viridis(v) {   // v in [0, 1] -> [r, g, b]
  var stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  v = Math.max(0, Math.min(1, v)) * (stops.length - 1);
  var i = Math.min(Math.floor(v), stops.length - 2), f = v - i, a = stops[i], b = stops[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}
function diverging(v) {  // v in [-1, 1] -> blue - white - red
  v = Math.max(-1, Math.min(1, v));
  return v < 0 ? [255 + v * 222, 255 + v * 153, 255 + v * 50] : [255 - v * 37, 255 - v * 200, 255 - v * 210];
}
var SIGMOID = {i: 1, f: 1, o: 1, r: 1, z: 1};

function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toFixed(3); }
function mean(a) { var s = 0; for (var k = 0; k < a.length; k++) s += a[k]; return s / a.length; }

function drawHeatmap(canvas, layer, T, cellW) {
  var names = Object.keys(layer.gates), H = names.length ? layer.gates[names[0]][0].length : 0;
  var rowH = H ? Math.max(1, Math.min(4, Math.floor(160 / H))) : 0, gap = 4;
  canvas.width = LABEL_W + T * cellW;
  canvas.height = Math.max(1, names.length * (H * rowH + gap));
  var ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  names.forEach(function (g, gi) {
    var top = gi * (H * rowH + gap), values = layer.gates[g], color = SIGMOID[g] ? viridis : function (v) { return diverging(v); };
    for (var t = 0; t < T; t++) {
      for (var u = 0; u < H; u++) {
        var c = color(values[t][u]);
        ctx.fillStyle = "rgb(" + (c[0] | 0) + "," + (c[1] | 0) + "," + (c[2] | 0) + ")";
        ctx.fillRect(LABEL_W + t * cellW, top + u * rowH, cellW, rowH);
      }
    }
    ctx.fillStyle = "#1b1f23"; ctx.font = "13px sans-serif"; ctx.textBaseline = "middle";
    ctx.fillText(g, 8, top + H * rowH / 2);
  });
}

function drawNorms(canvas, layer, T, cellW) {
  var h = 70, series = [["h", layer.h_norm, "#0969da"]];
  if (layer.c_norm) series.push(["c", layer.c_norm, "#cf222e"]);
  canvas.width = LABEL_W + T * cellW; canvas.height = h;
  var ctx = canvas.getContext("2d"), top = 0;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, h);
  series.forEach(function (s) { for (var k = 0; k < s[1].length; k++) top = Math.max(top, s[1][k]); });
  top = top || 1;
  series.forEach(function (s, si) {
    ctx.strokeStyle = s[2]; ctx.lineWidth = 1.5; ctx.beginPath();
    for (var t = 0; t < T; t++) {
      var x = LABEL_W + (t + 0.5) * cellW, y = h - 4 - (h - 8) * s[1][t] / top;
      if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
    ctx.fillStyle = s[2]; ctx.font = "12px sans-serif"; ctx.fillText("\u2016" + s[0] + "\u2016", 4, 14 + si * 16);
  });
}

function painted(canvas) {   // number of non-white pixels, written into the page for tests
  var d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data, n = 0;
  for (var k = 0; k < d.length; k += 4) if (d[k] < 250 || d[k + 1] < 250 || d[k + 2] < 250) n++;
  return n;
}

function setup(sec, text, ti) {
  var T = text.tokens_read, cellW = Math.max(3, Math.min(14, Math.floor(1000 / T)));
  var spans = sec.querySelectorAll(".tok"), byPos = {}, markers = [];
  spans.forEach(function (s) { if (s.dataset.pos !== undefined) byPos[s.dataset.pos] = s; });
  var details = sec.querySelector(".details");

  function select(p) {
    sec.querySelectorAll(".tok.sel").forEach(function (s) { s.classList.remove("sel"); });
    var tok = null;
    text.tokens.forEach(function (x) { if (x.position === p) tok = x; });
    if (!tok) return;
    byPos[p].classList.add("sel");
    markers.forEach(function (m) { m.style.display = "block"; m.style.left = (LABEL_W + p * cellW - 1) + "px"; m.style.width = cellW + "px"; });
    var rows = text.layers.map(function (L) {
      var cells = Object.keys(L.gates).map(function (g) { return "<td class=num>" + fmt(mean(L.gates[g][p])) + "</td>"; });
      return "<tr><td>" + L.name + "</td>" + cells.join("") + "<td class=num>" + fmt(L.h_norm[p]) +
             "</td><td class=num>" + (L.c_norm ? fmt(L.c_norm[p]) : "-") + "</td></tr>";
    });
    var gates = text.layers.length ? Object.keys(text.layers[0].gates) : [];
    details.innerHTML = "<b>" + tok.token.replace(/&/g, "&amp;").replace(/</g, "&lt;") + "</b> (position " + p +
      (tok.known ? "" : ", unknown word: read as &lt;unk&gt;") + "): attribution <b>" + fmt(tok.attribution) + "</b>" +
      "<table><tr><th>layer</th>" + gates.map(function (g) { return "<th>mean " + g + "</th>"; }).join("") +
      "<th>\u2016h\u2016</th><th>\u2016c\u2016</th></tr>" + rows.join("") + "</table>";
  }

  spans.forEach(function (s) {
    if (s.dataset.pos === undefined) return;
    var p = Number(s.dataset.pos);
    s.addEventListener("mouseenter", function () { select(p); });
    s.addEventListener("click", function () { select(p); });
  });
  var paintedTotal = 0;
  sec.querySelectorAll(".layer").forEach(function (div) {
    var L = text.layers[Number(div.dataset.layer)];
    var maps = div.querySelectorAll("canvas");
    if (Object.keys(L.gates).length) drawHeatmap(maps[0], L, T, cellW);
    drawNorms(maps[maps.length - 1], L, T, cellW);
    div.querySelectorAll(".mapwrap").forEach(function (w) {
      var m = document.createElement("div"); m.className = "marker"; w.appendChild(m); markers.push(m);
      w.addEventListener("mousemove", function (e) {
        var x = e.clientX - w.getBoundingClientRect().left - LABEL_W;
        if (x >= 0) select(Math.min(T - 1, Math.floor(x / cellW)));
      });
    });
    maps.forEach(function (c) { paintedTotal += painted(c); });
  });
  sec.dataset.painted = String(paintedTotal);
  var first = 0, best = -1;
  text.tokens.forEach(function (x) { if (x.read && Math.abs(x.attribution) > best) { best = Math.abs(x.attribution); first = x.position; } });
  select(first);
}

document.querySelectorAll(".textsec").forEach(function (sec) {
  var ti = Number(sec.dataset.text);
  setup(sec, DATA.texts[ti], ti);
});
document.body.dataset.rendered = "1";
"""


def _token_style(attribution: float, scale: float) -> str:
    """Background colour of a read token: green (towards the prediction) or red, alpha |a| / max|a|."""
    alpha = min(1.0, abs(attribution) / scale) if scale > 0 else 0.0
    rgb = "26,127,55" if attribution >= 0 else "207,34,46"
    return f"background: rgba({rgb},{alpha * 0.85:.3f})"


def _tokens_html(text: dict[str, Any], result: dict[str, Any]) -> str:
    scale = max((abs(t["attribution"]) for t in text["tokens"] if t["read"]), default=0.0)
    parts = []
    for t in text["tokens"]:
        word = escape(t["token"])
        if not t["read"]:
            why = f"not read: beyond max_len = {result['max_len']} (truncate = {result['truncate']})"
            parts.append(f'<span class="tok unread" title="{escape(why)}">{word}</span>')
            continue
        cls = "tok" if t["known"] else "tok unk"
        title = f"attribution {t['attribution']:+.4f}" + ("" if t["known"] else " (unknown: read as <unk>)")
        parts.append(
            f'<span class="{cls}" data-pos="{t["position"]}" style="{_token_style(t["attribution"], scale)}" '
            f'title="{escape(title)}">{word}</span>'
        )
    return " ".join(parts)


def _summary_html(text: dict[str, Any], result: dict[str, Any]) -> str:
    diff = text["output"] - text["baseline_output"]
    probs = ", ".join(f"{escape(k)} {v:.3f}" for k, v in text["probabilities"].items())
    kind = result["output_kind"]
    lines = [
        f'<div class="pred">Prediction: <b>{escape(text["label"])}</b> (probability {text["probability"]:.3f}; {probs})</div>',
        f'<div class="muted">Integrated Gradients of the {kind} of <b>{escape(text["label"])}</b> against an all-padding '
        f"baseline, {result['ig_steps']} steps: attributions sum to {text['attribution_sum']:+.4f}; "
        f"F(text) - F(baseline) = {text['output']:+.4f} - ({text['baseline_output']:+.4f}) = {diff:+.4f}; "
        f"delta {text['delta']:+.2e}. {text['tokens_read']} tokens read"
        + (f", {text['tokens_not_read']} not read (beyond max_len)" if text["tokens_not_read"] else "")
        + ".</div>",
    ]
    if abs(text["delta"]) > DELTA_WARN * max(abs(diff), 1e-12):
        lines.append(
            f'<div class="warn">|delta| is {abs(text["delta"]) / max(abs(diff), 1e-12):.0%} of the output difference: '
            "the model's output jumps along the path from the baseline (a sharp transition that the integral's "
            "points miss), so the attributions do not add up to it; read them as a rough guide.</div>"
        )
    return "\n".join(lines)


def _layers_html(text: dict[str, Any], cell: str) -> str:
    parts = []
    for k, layer in enumerate(text["layers"]):
        gates = list(layer["gates"])
        maps = '<div class="mapwrap"><canvas class="heatmap"></canvas></div>' if gates else ""
        what = (
            f"gates {', '.join(gates)} (rows: units; columns: read tokens; sigmoid gates 0 to 1 purple to yellow, "
            "tanh ones -1 to 1 blue to red)"
            if gates
            else "the RNN cell has no gates"
        )
        parts.append(
            f'<div class="layer" data-layer="{k}"><h3>{escape(cell.upper())} {escape(layer["name"])}</h3>'
            f'<div class="muted">{what}; below: ‖h‖{" and ‖c‖" if layer["c_norm"] else ""} at each token</div>'
            f'{maps}<div class="mapwrap"><canvas class="norms"></canvas></div></div>'
        )
    return "\n".join(parts)


def render_explanation(result: dict[str, Any]) -> str:
    """The whole HTML page for the dict of :func:`rnnlab.explain.explain_texts`."""
    head = (
        f"<h1>rnnlab explain: {escape(result['name'])}</h1>"
        f'<div class="muted">{escape(result["run_dir"])}: {escape(result["cell"].upper())} (encoder '
        f"{escape(result['encoder'])}), {result['num_layers']} layer(s){', bidirectional' if result['bidirectional'] else ''}, "
        f"hidden {result['hidden_size']}, pooling {escape(result['pooling'])}; checkpoint "
        f"{escape(result['checkpoint'])} (epoch {result['epoch']}); reads {result['max_len']} tokens "
        f"(truncate {escape(result['truncate'])}).</div>"
        '<p class="legend"><span style="background: rgba(26,127,55,0.6)">towards the prediction</span>'
        '<span style="background: rgba(207,34,46,0.6)">against it</span>'
        '<span class="tok unread">not read</span><span class="tok unk">unknown word</span> '
        "Hover or click a token (or a heatmap column) for its values.</p>"
    )
    sections = []
    for i, text in enumerate(result["texts"]):
        sections.append(
            f'<section class="textsec" data-text="{i}"><h2>Text {i + 1}</h2>'
            f"{_summary_html(text, result)}"
            f'<div class="tokens">{_tokens_html(text, result)}</div>'
            f'<div class="details"></div>{_layers_html(text, result["cell"])}</section>'
        )
    body = head + "\n".join(sections) + json_script("explain-data", result)
    return page(f"rnnlab explain: {result['name']}", body, css=_CSS, script=_SCRIPT)
