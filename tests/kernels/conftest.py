"""Kernel test fixtures: ``layer`` runs a test on both CPU fast paths (kernel_paths.py)."""

from __future__ import annotations

import shutil

import pytest
from kernel_paths import PATHS, require_compiled

from rnnlab.kernels import bptt, compiled


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or load) the compiled kernels before any test runs, in this session's cache:
    later tests that point $RNNLAB_CACHE at a temporary folder then find them (see
    ``compiled.ensure_built``) instead of building again."""
    if compiled.mode() != "0" and shutil.which("c++") is not None:
        compiled.ops()


@pytest.fixture(params=PATHS)
def layer(request: pytest.FixtureRequest):
    """The layer function of one path (same signature and numbers)."""
    if request.param == "python":
        return bptt.layer
    require_compiled()
    from rnnlab.kernels import native

    return native.layer
