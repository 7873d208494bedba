"""One entry point for any supported data path: IMDB (archive, folder, download) or your own files."""

from __future__ import annotations

import os
from pathlib import Path

from rnnlab.data.datasets import TextDataset, load_text_dataset
from rnnlab.data.imdb import load_imdb
from rnnlab.errors import DataError

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_imdb_path(path: str | os.PathLike | None) -> bool:
    """True for None/"" (``$RNNLAB_DATA`` or download), a tar archive, or an aclImdb-shaped folder."""
    if path is None or str(path) == "":
        return True
    p = Path(path).expanduser()
    if p.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return True
    return p.is_dir() and any(
        (root / "train" / "pos").is_dir() and (root / "test").is_dir() for root in (p, p / "aclImdb")
    )


def load_dataset(
    path: str | os.PathLike | None = None,
    *,
    test: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    val_split: str = "group",
    seed: int = 0,
    progress: bool = True,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    test_fraction: float = 0.2,
    use_cache: bool = True,
) -> TextDataset:
    """:func:`load_imdb` for IMDB paths (see :func:`is_imdb_path`), else :func:`load_text_dataset`.

    For your own files the test and validation splits are grouped by ``group_column`` when it is
    given, else random and stratified by label (``val_split`` applies to IMDB only).
    """
    if path is not None and str(path) != "" and not Path(path).expanduser().exists():
        raise DataError(
            f"{Path(path).expanduser()}: no such file or folder; expected an IMDB archive (.tar.gz), "
            "an aclImdb/ folder, a .csv, .tsv or .jsonl file, or a folder with one subfolder per label"
        )
    if test is None and is_imdb_path(path):
        return load_imdb(
            path,
            cache_dir=cache_dir,
            val_fraction=val_fraction,
            val_split=val_split,
            seed=seed,
            progress=progress,
            use_cache=use_cache,
        )
    assert path is not None
    return load_text_dataset(
        path,
        test,
        text_column=text_column,
        label_column=label_column,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        group_column=group_column,
        seed=seed,
    )
