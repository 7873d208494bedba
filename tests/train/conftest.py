"""Fixtures: tiny encoded datasets (see train_helpers)."""

from __future__ import annotations

import pytest
from train_helpers import make_dataset

from rnnlab.data import encode_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return encode_dataset(
        make_dataset(), max_words=100, max_len=20, cache_dir=tmp_path_factory.mktemp("cache"), progress=False
    )


@pytest.fixture(scope="session")
def tiny_val_data(tmp_path_factory):
    return encode_dataset(
        make_dataset(n_val=64), max_words=100, max_len=20, cache_dir=tmp_path_factory.mktemp("cache"), progress=False
    )
