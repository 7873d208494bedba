"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real IMDB archive (see ../shared/data/README.md); tests that need it skip when absent.
IMDB_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"


@pytest.fixture(autouse=True)
def _limit_threads():
    """Two test workers share two cores: one torch thread each keeps timings and results stable."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def imdb_archive() -> Path:
    if not IMDB_ARCHIVE.exists():
        pytest.skip(f"real IMDB data not found at {IMDB_ARCHIVE}")
    return IMDB_ARCHIVE
