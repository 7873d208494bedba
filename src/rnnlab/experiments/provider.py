"""The data of a comparison: each distinct dataset loaded once, each distinct encoding setting encoded once."""

from __future__ import annotations

import os
from typing import Any

from rnnlab.train.config import Config
from rnnlab.train.dataset import load_key, load_texts


def data_keys(config: Config) -> tuple[tuple, tuple]:
    """(what loading depends on, what encoding adds): runs sharing both share one encoded dataset."""
    return load_key(config), (config.max_words, config.min_freq, config.max_len, config.truncate)


class DataProvider:
    """Loads each distinct dataset once and encodes each distinct setting once (the last one is kept).

    data: None (load each config's ``data``), a ``TextDataset`` (encoded here per setting) or an
    ``EncodedData`` (used as is for every run).
    """

    def __init__(self, data: Any, *, cache_dir: str | os.PathLike | None, progress: bool) -> None:
        from rnnlab.data import EncodedData

        self.given = data
        self.given_encoded = isinstance(data, EncodedData)
        self.cache_dir = cache_dir
        self.progress = progress
        self._texts: dict[tuple, Any] = {}
        self._encoded: tuple[tuple, Any] | None = None

    def texts(self, config: Config) -> Any:
        """The TextDataset for this config (None when an encoded dataset was given)."""
        if self.given is not None:
            return None if self.given_encoded else self.given
        key, _ = data_keys(config)
        if key not in self._texts:
            self._texts.clear()  # one raw dataset in memory at a time
            self._texts[key] = load_texts(config, progress=self.progress)
        return self._texts[key]

    def encoded(self, config: Config) -> Any:
        """The EncodedData for this config (from the encoded cache when it holds it)."""
        if self.given_encoded:
            return self.given
        from rnnlab.data import encode_dataset

        key = data_keys(config) if self.given is None else (None, data_keys(config)[1])
        if self._encoded is None or self._encoded[0] != key:
            dataset = self.texts(config)
            enc = encode_dataset(
                dataset,
                max_words=config.max_words,
                min_freq=config.min_freq,
                max_len=config.max_len,
                truncate=config.truncate,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
            self._encoded = (key, enc)
        return self._encoded[1]

    def forget(self) -> None:
        """Drop what is held in memory (the workers of ``--jobs`` load their own copies)."""
        self._encoded, self._texts = None, {}
