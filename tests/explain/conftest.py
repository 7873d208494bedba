"""Fixtures: a tiny CSV dataset and a factory of tiny trained runs (trained once per session)."""

from __future__ import annotations

import pytest
from explain_helpers import train_run, write_csv


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv")


@pytest.fixture(scope="session")
def make_run(tmp_path_factory, tiny_csv, monkeypatch_session_cache):
    root = tmp_path_factory.mktemp("runs")
    return lambda **changes: train_run(root, tiny_csv, **changes)


@pytest.fixture(scope="session")
def monkeypatch_session_cache(tmp_path_factory):
    """Keep the encoded-data cache of these runs out of the user's cache folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
