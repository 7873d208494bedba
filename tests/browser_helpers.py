"""Open a page from disk in headless Chromium (Debian's ``chromium``) with the network off.

``render(path, tmp)`` returns the DOM after the page's scripts ran (``--dump-dom``), a
screenshot (PNG, read as an RGB array), and the console lines Chromium logged. Pages built by
``rnnlab._html.page`` also list their script errors in ``#page-errors``. Tests that need the
browser call :func:`chromium_or_skip` first: it skips, saying why, where Chromium is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: the network is off
    "--proxy-server=127.0.0.1:9",  # and nothing gets out through a proxy either
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


@dataclass
class Rendered:
    dom: str
    screenshot: np.ndarray  # (H, W, 3) floats in [0, 1]
    console: list[str]  # Chromium's CONSOLE log lines

    def page_errors(self) -> str:
        m = re.search(r'<pre id="page-errors"[^>]*>(.*?)</pre>', self.dom, re.S)
        return m.group(1).strip() if m else "(no #page-errors element)"


def chromium_or_skip() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip(
            "headless Chromium not found: install Debian's chromium package (apt-get install chromium; .ci/run does)"
        )
    return exe


def _run(exe: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exe, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def render(path: Path, tmp: Path, *, width: int = 1280, height: int = 1600) -> Rendered:
    from matplotlib.image import imread

    exe = chromium_or_skip()
    url = path.resolve().as_uri()
    dom = _run(exe, ["--dump-dom", url], tmp / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot_path = tmp / f"{path.stem}.png"
    shot = _run(exe, [f"--screenshot={shot_path}", f"--window-size={width},{height}", url], tmp / "profile-shot")
    assert shot.returncode == 0 and shot_path.exists(), shot.stderr[-2000:]
    console = [line for line in (dom.stderr + shot.stderr).splitlines() if "CONSOLE" in line]
    return Rendered(dom.stdout, imread(shot_path)[..., :3], console)


def assert_not_blank(image: np.ndarray, *, min_colors: int = 20, min_ink: float = 0.02) -> None:
    """Not a blank page: many distinct colours and a share of non-white pixels."""
    pixels = (image.reshape(-1, 3) * 255).round().astype(np.int32)
    colors = len(np.unique(pixels[:, 0] * 65536 + pixels[:, 1] * 256 + pixels[:, 2]))
    ink = float((pixels.min(axis=1) < 240).mean())
    assert colors >= min_colors and ink >= min_ink, f"blank-looking screenshot: {colors} colours, {ink:.1%} ink"
