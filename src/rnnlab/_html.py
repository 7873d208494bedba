"""Self-contained HTML pages: one file, no network (``rnnlab explain``, ``rnnlab report --html``).

Every page built by :func:`page` carries a Content-Security-Policy that allows nothing from
outside the file (images only as ``data:`` URIs, inline styles and scripts), and an error
collector that runs before any other script: uncaught errors, unhandled promise rejections
and ``console.error`` calls are listed in ``<pre id="page-errors">`` (hidden while empty), so
that a test reading the page's DOM sees them. A page's script ends by setting
``document.body.dataset.rendered = "1"``.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

__all__ = ["escape", "json_script", "page", "png_data_uri"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_ERROR_COLLECTOR = """
(function () {
  function report(msg) {
    var box = document.getElementById("page-errors");
    if (!box) { window.__pendingErrors = (window.__pendingErrors || []).concat([msg]); return; }
    box.hidden = false;
    box.textContent += msg + "\\n";
  }
  window.__reportError = report;
  window.addEventListener("error", function (e) { report("error: " + e.message + " (line " + e.lineno + ")"); });
  window.addEventListener("unhandledrejection", function (e) { report("unhandled rejection: " + e.reason); });
  var original = console.error;
  console.error = function () {
    report("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
"""

_BASE_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 16px 24px 48px; color: #1b1f23; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f6f8fa; padding: 0 3px; border-radius: 3px; }
.muted { color: #57606a; } img.plot { max-width: 100%; border: 1px solid #eaeef2; margin: 6px 0; }
#page-errors { color: #b00; background: #fff0f0; padding: 8px; white-space: pre-wrap; }
"""


def escape(text: Any) -> str:
    """HTML-escaped ``str(text)`` (quotes too, so it is safe in attributes)."""
    return html.escape(str(text), quote=True)


def json_script(element_id: str, data: Any) -> str:
    """``<script type="application/json">`` holding ``data``; ``</`` is escaped so the data cannot
    close the element. Read in the page with ``JSON.parse(document.getElementById(id).textContent)``."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f'<script type="application/json" id="{escape(element_id)}">{text}</script>'


def png_data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("png_data_uri: expected PNG bytes (they start with the PNG signature)")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page(title: str, body: str, *, css: str = "", script: str = "") -> str:
    """A whole HTML document: ``body`` (HTML), extra ``css``, and ``script`` run at the end of the
    body (it should end with ``document.body.dataset.rendered = "1"``)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_BASE_CSS}{css}</style>\n"
        f"<script>{_ERROR_COLLECTOR}</script>\n</head>\n<body>\n"
        '<pre id="page-errors" hidden></pre>\n'
        "<script>(window.__pendingErrors || []).forEach(function (m) { window.__reportError(m); });</script>\n"
        f"{body}\n<script>\n{script}\n</script>\n</body>\n</html>\n"
    )
