"""The vocabulary: a deterministic word <-> id mapping, built from training tokens, saved as JSON."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from rnnlab.data._cache import atomic_write_json
from rnnlab.errors import DataError

PAD, UNK = "<pad>", "<unk>"


class _Ids(dict):
    """word -> id with unknown words mapped to ``<unk>`` (1) by ``__missing__``, for fast ``map``."""

    def __missing__(self, key: str) -> int:
        return 1


class Vocabulary:
    r"""Word ids: ``0 = <pad>``, ``1 = <unk>``, then the words by (-frequency, word).

    Built from the training split only, so test words never leak into it. With
    ``max_words = M`` the vocabulary keeps ``<unk>`` and the ``M - 1`` most frequent words
    (ties broken by the word itself, so the result does not depend on the input order):
    ``M`` ids that an input token can map to, plus the padding id, i.e. ``len(vocab) == M + 1``.
    The default ``M = 20000`` gives the 20,001 ids (``vocab_size: 20001``) of the original
    experiment. A word outside the vocabulary (rarer, below ``min_freq``, or unseen in training)
    maps to ``<unk>`` (1); id 0 only ever marks the padding to the right of a sequence.

    Example::

        >>> v = Vocabulary.build([["b", "a", "b"], ["c", "a"]], max_words=3)
        >>> v.itos, v.encode(["a", "c", "zebra"])
        (['<pad>', '<unk>', 'a', 'b'], [2, 1, 1])
    """

    pad_id = 0
    unk_id = 1

    def __init__(self, words: Sequence[str], counts: Sequence[int] | None = None) -> None:
        words = list(words)
        if len(set(words)) != len(words) or PAD in words or UNK in words:
            raise ValueError("Vocabulary: words must be unique and must not contain '<pad>' or '<unk>'")
        if counts is not None and len(counts) != len(words):
            raise ValueError(f"Vocabulary: expected {len(words)} counts, got {len(counts)}")
        self.itos: list[str] = [PAD, UNK, *words]
        self.counts: list[int] | None = None if counts is None else [int(c) for c in counts]
        self.stoi: dict[str, int] = _Ids((w, i) for i, w in enumerate(self.itos))

    @classmethod
    def build(
        cls, token_lists: Iterable[Iterable[str]], max_words: int | None = 20000, min_freq: int = 1
    ) -> Vocabulary:
        """Count the tokens and keep ``<unk>`` + the ``max_words - 1`` most frequent words with count >= min_freq.

        ``max_words=None`` keeps every word with count >= ``min_freq``.
        """
        counter = Counter(chain.from_iterable(token_lists))
        return cls.from_counter(counter, max_words=max_words, min_freq=min_freq)

    @staticmethod
    def check_settings(max_words: int | None, min_freq: int) -> None:
        """Raise DataError (a ValueError) for a ``max_words`` or ``min_freq`` that :meth:`build` would refuse."""
        if max_words is not None and (not isinstance(max_words, int) or max_words < 1):
            raise DataError(f"Vocabulary: max_words must be an int >= 1 (it counts <unk>) or None, got {max_words!r}")
        if not isinstance(min_freq, int) or min_freq < 1:
            raise DataError(f"Vocabulary: min_freq must be an int >= 1, got {min_freq!r}")

    @classmethod
    def from_counter(cls, counter: Counter, max_words: int | None = 20000, min_freq: int = 1) -> Vocabulary:
        """The vocabulary of word counts ``counter`` (see :meth:`build`)."""
        cls.check_settings(max_words, min_freq)
        items = [(w, c) for w, c in counter.items() if c >= min_freq and w not in (PAD, UNK)]
        items.sort(key=lambda wc: (-wc[1], wc[0]))
        if max_words is not None:
            items = items[: max_words - 1]
        return cls([w for w, _ in items], [c for _, c in items])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids: <pad>, <unk> and {len(self) - 2} words)"

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Map tokens to ids (unknown -> 1)."""
        return list(map(self.stoi.__getitem__, tokens))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "specials": [PAD, UNK], "words": self.itos[2:], "counts": self.counts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        if (
            not isinstance(d, dict)
            or d.get("format") != 1
            or d.get("specials") != [PAD, UNK]
            or not isinstance(d.get("words"), list)
        ):
            raise ValueError("Vocabulary: expected a dict with format 1, specials ['<pad>', '<unk>'] and a words list")
        return cls(d["words"], d.get("counts"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (atomically)."""
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        try:
            d = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file not found: {path}") from None
        except ValueError as err:
            raise ValueError(f"{path}: not a vocabulary JSON file ({err})") from None
        try:
            return cls.from_dict(d)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
