"""The dataset a config names: its path, how it is split, and the key that identifies the result.

A config's data keys are ``data`` (the path; "" = ``$RNNLAB_DATA``, else the IMDB download) and,
for your own CSV/TSV/JSONL files or label folders, ``test_data`` (a separate test file; "" = hold
out ``test_fraction`` of ``data``), ``text_column``, ``label_column`` and ``group_column`` (""
= split at random, stratified by label; else whole groups go to one side). ``val_fraction`` and
``val_split`` carve the validation split. Training, ``--resume``, ``rnnlab evaluate``,
``rnnlab predict`` and ``rnnlab compare`` all read the data through :func:`load_texts`, so a run
directory's ``config.toml`` is enough to rebuild exactly the splits it was trained on.
"""

from __future__ import annotations

import os
from typing import Any

from rnnlab.train.config import Config, ConfigError

#: Config keys that only apply to your own data (IMDB has its own files, columns and test split).
OWN_DATA_KEYS = ("test_data", "text_column", "label_column", "group_column", "test_fraction")


def data_source(config: Config) -> str | None:
    """``config.data``, else ``$RNNLAB_DATA``, else None (download IMDB)."""
    return config.data or os.environ.get("RNNLAB_DATA") or None


def load_key(config: Config) -> tuple:
    """Everything loading depends on: configs with equal keys load the same splits."""
    return (data_source(config), *(getattr(config, k) for k in OWN_DATA_KEYS), config.val_fraction, config.val_split)


def dataset_options(config: Config) -> dict[str, Any]:
    """The keyword arguments of ``rnnlab.data.load_dataset`` for this config (besides the path).

    The splits always use seed 0, so runs that differ only in ``seed`` see the same splits (and
    share one encoding). Raises ConfigError when own-data keys are set for IMDB.
    """
    _check_own_data_keys(config)
    return {
        "test": config.test_data or None,
        "text_column": config.text_column,
        "label_column": config.label_column,
        "group_column": config.group_column or None,
        "test_fraction": config.test_fraction,
        "val_fraction": config.val_fraction,
        "val_split": config.val_split,
        "seed": 0,
    }


def load_texts(config: Config, *, progress: bool = True, cache_dir: str | os.PathLike | None = None) -> Any:
    """The config's dataset as a ``rnnlab.data.TextDataset`` (train, test and optional validation)."""
    from rnnlab.data import load_dataset

    return load_dataset(data_source(config), cache_dir=cache_dir, progress=progress, **dataset_options(config))


def _check_own_data_keys(config: Config) -> None:
    from rnnlab.data.sources import is_imdb_path

    source = data_source(config)
    if not is_imdb_path(source):
        return
    default = Config()
    changed = [f"{k}={getattr(config, k)!r}" for k in OWN_DATA_KEYS if getattr(config, k) != getattr(default, k)]
    if changed:
        shown = source or "IMDB (no data path: $RNNLAB_DATA or the download)"
        raise ConfigError(
            f"{', '.join(changed)}: these keys apply to your own CSV/TSV/JSONL or folder data, but the data is "
            f"{shown}, the IMDB dataset with its own train/test split: remove them, or set data to your file"
        )
