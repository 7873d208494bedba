"""Encoded data and the pieces every encoder shares: the splits' arrays, truncation, padding, cache entries.

``rnnlab.data.encoding`` (in memory, optionally in worker processes) and ``rnnlab.data.streaming``
(files larger than memory) both turn token lists into the same ``(N, L)`` id matrices with
:class:`TokenRows` and :func:`fill_rows`, and store and read them as the same cache entry
(:func:`load_entry`, :func:`vocab_blob`); :class:`EncodedSplit` and :class:`EncodedData` are what
they return. The ids of a split held in the cache are a memory-mapped ``(N, L)`` ``.npy`` file
of the narrowest signed integer type that holds the vocabulary (:func:`ids_dtype`: int16, 2 bytes
per token, up to 32,768 ids), so a loaded split costs memory only for the rows a batch reads
(see ``rnnlab.data._cache``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rnnlab.data._cache import read_entry
from rnnlab.data.tokenizer import Tokenizer
from rnnlab.data.vocab import Vocabulary


def ids_dtype(vocab_size: int) -> type:
    """Storage type of encoded ids for a vocabulary of ``vocab_size`` ids (0 ... vocab_size - 1):
    ``np.int16`` up to 32,768 ids (the default 20,001 included), else ``np.int32``. Batches and
    items are int64 (``.long()`` of the rows read), as ``nn.Embedding`` and the models expect."""
    if vocab_size > 1 << 31:
        raise ValueError(f"ids_dtype: at most 2**31 ids are supported, got a vocabulary of {vocab_size}")
    return np.int16 if vocab_size <= 1 << 15 else np.int32


class EncodedSplit(Dataset):
    """One encoded split, right-padded with ``<pad>`` (0).

    Attributes (N examples, ``L = max_len``, or the longest sequence when ``max_len`` is None):

    - ``ids``: ``(N, L)`` integers; row i holds ``lengths[i]`` ids then zeros. Encoded splits
      store them as :func:`ids_dtype` (int16 for up to 32,768 ids); any integer dtype is accepted;
    - ``lengths``: ``(N,)`` int64, ``1 <= lengths[i] <= L`` (a text without any token is encoded
      as a single ``<unk>``);
    - ``labels``: ``(N,)`` int64;
    - ``num_tokens``: ``(N,)`` int64, tokens before truncation (0 for a text without tokens).

    Item i is ``(ids[i, :lengths[i]] as int64, labels[i])``; :func:`collate` pads a list of items
    back; the loaders' batches are int64 too.
    A split loaded from (or built into) the cache has ``ids`` backed by a copy-on-write memory map
    of the cache file: rows are read from disk when a batch touches them.
    """

    def __init__(
        self, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, num_tokens: torch.Tensor | None = None
    ) -> None:
        n = ids.shape[0]
        if ids.dim() != 2 or lengths.shape != (n,) or labels.shape != (n,):
            raise ValueError(
                f"EncodedSplit: expected ids (N, L), lengths (N,), labels (N,); got "
                f"{tuple(ids.shape)}, {tuple(lengths.shape)}, {tuple(labels.shape)}"
            )
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"EncodedSplit: expected integer ids, got dtype {ids.dtype}")
        self.ids, self.lengths, self.labels = ids, lengths, labels
        self.num_tokens = num_tokens if num_tokens is not None else lengths.clone()

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[i, : int(self.lengths[i])].long(), self.labels[i]

    def __repr__(self) -> str:
        return f"EncodedSplit(N={len(self)}, max_len={self.ids.shape[1]})"


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad ``(ids_i (L_i,), label_i)`` items into ``(ids (N, max L_i), lengths (N,), labels (N,))``."""
    lengths = torch.tensor([len(x) for x, _ in items], dtype=torch.int64)
    ids = torch.zeros(len(items), int(lengths.max()) if len(items) else 0, dtype=torch.int64)
    for row, (x, _) in enumerate(items):
        ids[row, : len(x)] = x
    labels = (
        torch.stack([torch.as_tensor(y, dtype=torch.int64) for _, y in items])
        if items
        else torch.zeros(0, dtype=torch.int64)
    )
    return ids, lengths, labels


@dataclass
class EncodedData:
    """The encoded splits with the vocabulary and tokenizer that produced them."""

    train: EncodedSplit
    test: EncodedSplit
    val: EncodedSplit | None
    vocab: Vocabulary
    tokenizer: Tokenizer
    label_names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False
    seconds: float = 0.0

    def splits(self) -> dict[str, EncodedSplit]:
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        out["test"] = self.test
        return out


def encode_texts(
    texts: Sequence[str], tokenizer: Tokenizer, vocab: Vocabulary, *, max_len: int | None = 200, truncate: str = "head"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode raw texts (e.g. for ``predict``): ``(ids (N, L), lengths (N,))`` as in :func:`encode_dataset`."""
    tokens = TokenRows.from_lists(list(map(tokenizer.tokenize, texts)), max_len, truncate)
    ids, lengths, _ = tokens.encode(vocab, max_len)
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lengths.astype(np.int64))


@dataclass
class TokenRows:
    """The kept (truncated) tokens of a split, flat, with per-text kept and total token counts."""

    flat: Any  # iterable over the kept tokens of text 0, then text 1, ...
    kept: np.ndarray  # (N,) int64 tokens kept per text
    total: np.ndarray  # (N,) int64 tokens per text before truncation

    @classmethod
    def from_lists(cls, token_lists: list[list[str]], max_len: int | None, truncate: str) -> TokenRows:
        total = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
        kept_lists = token_lists if max_len is None else [truncate_tokens(t, max_len, truncate) for t in token_lists]
        kept = total if max_len is None else np.minimum(total, max_len)
        return cls(chain.from_iterable(kept_lists), kept, total)

    def encode(self, vocab: Vocabulary, max_len: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids (N, L) uint16|int32, lengths (N,) int32, num_tokens (N,) int32)``."""
        flat = np.fromiter(map(vocab.stoi.__getitem__, self.flat), lookup_dtype(vocab), int(self.kept.sum()))
        return fill_rows(flat, self.kept, self.total, max_len, vocab)


def lookup_dtype(vocab: Vocabulary) -> type:
    return np.uint16 if len(vocab) <= 1 << 16 else np.int32


def fill_rows(
    flat: np.ndarray, kept: np.ndarray, total: np.ndarray, max_len: int | None, vocab: Vocabulary
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scatter the flat kept ids of N texts into a right-padded ``(N, L)`` matrix."""
    dtype = flat.dtype
    lengths = kept
    empty = np.flatnonzero(lengths == 0)
    if len(empty):  # a text without tokens becomes one <unk>, so every length is >= 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        flat = np.insert(flat, starts[empty], vocab.unk_id).astype(dtype)
        lengths = np.maximum(lengths, 1)
    width = int(max_len) if max_len is not None else int(lengths.max(initial=1))
    ids = np.zeros((len(lengths), width), dtype)
    ids[np.arange(width) < lengths[:, None]] = flat  # row-major fill: row i gets its lengths[i] ids
    return ids, lengths.astype(np.int32), total.astype(np.int32)


#: Allowed ``truncate`` values: keep the first, the last, or the first quarter and the last
#: three quarters of ``max_len`` tokens (head+tail, as in Sun et al. 2019 for long reviews).
TRUNCATE_CHOICES = ("head", "tail", "head_tail")


def truncate_tokens(toks: list[str], max_len: int | None, truncate: str) -> list[str]:
    """A text's kept tokens: ``head`` toks[:L], ``tail`` toks[-L:], ``head_tail`` toks[:L//4] + toks[-(L - L//4):]."""
    if max_len is None or len(toks) <= max_len:
        return toks
    if truncate == "head":
        return toks[:max_len]
    if truncate == "tail":
        return toks[-max_len:]
    head = max_len // 4
    return toks[:head] + toks[len(toks) - (max_len - head) :]


def vocab_blob(vocab: Vocabulary) -> bytes:
    return json.dumps(vocab.to_dict(), ensure_ascii=False).encode("utf-8")


def load_entry(
    entry: Any,
    key: dict[str, Any],
    names: list[str],
    tokenizer: Tokenizer,
    label_names: Sequence[str],
    settings: dict[str, Any],
    t0: float,
    *,
    verify: bool,
) -> EncodedData | None:
    """The :class:`EncodedData` held by a cache entry (ids memory-mapped), or None if absent/stale/corrupt."""
    hit = read_entry(entry, key, verify=verify)
    if hit is None:
        return None
    arrays, blobs, _ = hit
    try:
        vocab = Vocabulary.from_dict(json.loads(blobs["vocab.json"]))
        out = {name: split_from_arrays(arrays, name) for name in names}
    except (KeyError, ValueError):
        return None
    for sp in out.values():  # cheap consistency checks of the small arrays (they are CRC-checked too)
        width = sp.ids.shape[1]
        if len(sp) and (
            int(sp.lengths.min()) < 1
            or int(sp.lengths.max()) > width
            or int(sp.labels.min()) < 0
            or int(sp.labels.max()) >= len(label_names)
        ):
            return None
    return EncodedData(
        out["train"],
        out["test"],
        out.get("val"),
        vocab,
        tokenizer,
        list(label_names),
        settings,
        True,
        time.perf_counter() - t0,
    )


def split_from_arrays(arrays: dict[str, np.ndarray], name: str) -> EncodedSplit:
    """An :class:`EncodedSplit` over cache arrays: ids wrap the (mapped) array as is, the rest is loaded."""

    def t(k: str) -> torch.Tensor:
        return torch.from_numpy(arrays[f"{name}_{k}"].astype(np.int64))

    ids = arrays[f"{name}_ids"]
    n = ids.shape[0]
    for k in ("lengths", "labels", "num_tokens"):
        if arrays[f"{name}_{k}"].shape != (n,):
            raise ValueError(f"{name}_{k}: expected shape ({n},), got {arrays[f'{name}_{k}'].shape}")
    if ids.ndim != 2 or ids.dtype not in (np.int16, np.int32, np.int64):
        raise ValueError(f"{name}_ids: expected an (N, L) int16/int32/int64 array, got {ids.dtype} {ids.shape}")
    # A mapped file (mode "c", copy-on-write) is writable for numpy and torch, so from_numpy shares it
    # without a copy and without torch's warning about read-only arrays; nothing writes into ids.
    ids_t = torch.from_numpy(ids)
    return EncodedSplit(ids_t, t("lengths"), t("labels"), t("num_tokens"))
