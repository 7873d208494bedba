"""Tokenise, build the vocabulary and encode a :class:`TextDataset` into padded id tensors, cached on disk.

The cache entry holds each split's ids as a memory-mapped ``(N, L)`` ``.npy`` file of the narrowest
signed integer type that holds the vocabulary (:func:`ids_dtype`: int16, 2 bytes per token, up to
32,768 ids), so a loaded split costs memory only for the rows a batch reads (see
``rnnlab.data._cache``); large CSV/TSV/JSONL files are encoded in a streaming pass straight into
such files (``rnnlab.data.streaming``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rnnlab.data._cache import EntryWriter, key_digest, read_entry, resolve_cache_dir
from rnnlab.data.datasets import FileTextDataset, TextDataset, TextSplit
from rnnlab.data.tokenizer import Tokenizer
from rnnlab.data.vocab import Vocabulary

#: Bump when the encoding itself changes (invalidates cached encodings).
#: 3: ids stored as int16/int32 (:func:`ids_dtype`) instead of int64.
ENCODING_VERSION = 3


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
    tokens = _Tokens.from_lists(list(map(tokenizer.tokenize, texts)), max_len, truncate)
    ids, lengths, _ = tokens.encode(vocab, max_len)
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lengths.astype(np.int64))


@dataclass
class _Tokens:
    """The kept (truncated) tokens of a split, flat, with per-text kept and total token counts."""

    flat: Any  # iterable over the kept tokens of text 0, then text 1, ...
    kept: np.ndarray  # (N,) int64 tokens kept per text
    total: np.ndarray  # (N,) int64 tokens per text before truncation

    @classmethod
    def from_lists(cls, token_lists: list[list[str]], max_len: int | None, truncate: str) -> _Tokens:
        total = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
        kept_lists = token_lists if max_len is None else [_truncate(t, max_len, truncate) for t in token_lists]
        kept = total if max_len is None else np.minimum(total, max_len)
        return cls(chain.from_iterable(kept_lists), kept, total)

    def encode(self, vocab: Vocabulary, max_len: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids (N, L) uint16|int32, lengths (N,) int32, num_tokens (N,) int32)``."""
        flat = np.fromiter(map(vocab.stoi.__getitem__, self.flat), _id_dtype(vocab), int(self.kept.sum()))
        return _fill(flat, self.kept, self.total, max_len, vocab)


def _id_dtype(vocab: Vocabulary) -> type:
    return np.uint16 if len(vocab) <= 1 << 16 else np.int32


def _fill(
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


# Fork-based parallel encoding in two rounds of worker processes, which inherit their inputs
# (texts, then vocabulary) from the parent instead of receiving them pickled:
#   1. train chunks: tokenise, count words, return the counts and the kept tokens as one
#      space-joined string (the tokenizer's words never contain whitespace);
#   2. (after the parent built the vocabulary) train chunks: split the joined strings and look
#      the ids up; other splits: tokenise, truncate, look up. Each returns a flat id array.
# Used for large datasets when 2+ cores and fork exist; the result equals the serial path's.
_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()
_PARALLEL_MIN_TEXTS = 20000


#: Allowed ``truncate`` values: keep the first, the last, or the first quarter and the last
#: three quarters of ``max_len`` tokens (head+tail, as in Sun et al. 2019 for long reviews).
TRUNCATE_CHOICES = ("head", "tail", "head_tail")


def _truncate(toks: list[str], max_len: int | None, truncate: str) -> list[str]:
    """A text's kept tokens: ``head`` toks[:L], ``tail`` toks[-L:], ``head_tail`` toks[:L//4] + toks[-(L - L//4):]."""
    if max_len is None or len(toks) <= max_len:
        return toks
    if truncate == "head":
        return toks[:max_len]
    if truncate == "tail":
        return toks[-max_len:]
    head = max_len // 4
    return toks[:head] + toks[len(toks) - (max_len - head) :]


def _count_chunk(task: tuple[int, int]) -> tuple[dict[str, int], str, np.ndarray]:
    start, stop = task
    tokenizer: Tokenizer = _SHARED["tokenizer"]
    max_len, truncate = _SHARED["max_len"], _SHARED["truncate"]
    counter: Counter = Counter()
    parts: list[str] = []
    totals = np.zeros(stop - start, np.int64)
    for j, text in enumerate(_SHARED["texts"]["train"][start:stop]):
        toks = tokenizer.tokenize(text)
        totals[j] = len(toks)
        counter.update(toks)
        parts.append(" ".join(_truncate(toks, max_len, truncate)))
    return dict(counter), " ".join(parts), totals


def _encode_chunk(task: tuple[str, int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    name, start, stop, k = task
    get, dtype = _SHARED["stoi"].__getitem__, _SHARED["dtype"]
    if name == "train":  # tokenised in round 1
        return np.fromiter(map(get, _SHARED["joined"][k].split()), dtype), None
    tokenizer: Tokenizer = _SHARED["tokenizer"]
    max_len, truncate = _SHARED["max_len"], _SHARED["truncate"]
    lists = [tokenizer.tokenize(t) for t in _SHARED["texts"][name][start:stop]]
    totals = np.fromiter(map(len, lists), np.int64, len(lists))
    flat = np.fromiter(map(get, chain.from_iterable(_truncate(t, max_len, truncate) for t in lists)), dtype)
    return flat, totals


def _progress(it: Any, enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit=" chunks", leave=False)


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _encode_parallel(
    splits: dict[str, TextSplit],
    tokenizer: Tokenizer,
    max_words: int | None,
    min_freq: int,
    max_len: int | None,
    truncate: str,
    workers: int,
    progress: bool,
) -> tuple[Vocabulary, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    train_chunks = _chunks(len(splits["train"]), 2 * workers)  # 2 chunks per worker balances load
    with _SHARED_LOCK:  # the workers read _SHARED as it is when their pool forks
        _SHARED.update(
            texts={k: v.texts for k, v in splits.items()}, tokenizer=tokenizer, max_len=max_len, truncate=truncate
        )
        try:
            with ctx.Pool(workers) as pool:
                counted = list(
                    _progress(pool.imap(_count_chunk, train_chunks), progress, len(train_chunks), "tokenizing train")
                )
            counter: Counter = Counter()
            for counts, _, _ in counted:
                counter.update(counts)
            vocab = Vocabulary.from_counter(counter, max_words=max_words, min_freq=min_freq)
            train_totals = np.concatenate([t for _, _, t in counted])
            _SHARED.update(joined=[j for _, j, _ in counted], stoi=vocab.stoi, dtype=_id_dtype(vocab))
            del counted
            tasks = [("train", a, b, k) for k, (a, b) in enumerate(train_chunks)]
            for name, split in splits.items():
                if name != "train":
                    tasks += [(name, a, b, -1) for a, b in _chunks(len(split), 2 * workers)]
            with ctx.Pool(workers) as pool:
                encoded = list(_progress(pool.imap(_encode_chunk, tasks), progress, len(tasks), "encoding"))
        finally:
            _SHARED.clear()
    out = {}
    for name in splits:
        parts = [r for (n, *_), r in zip(tasks, encoded) if n == name]
        total = train_totals if name == "train" else np.concatenate([t for _, t in parts])
        kept = total if max_len is None else np.minimum(total, max_len)
        out[name] = _fill(np.concatenate([f for f, _ in parts]), kept, total, max_len, vocab)
    return vocab, out


def _use_parallel(splits: dict[str, TextSplit], workers: int | None, tokenizer: Tokenizer) -> int:
    if type(tokenizer) is not Tokenizer:  # the workers join tokens with spaces: only ours is known to allow it
        return 0
    if workers is not None:
        return workers if workers > 1 else 0
    import multiprocessing as mp

    if sum(map(len, splits.values())) < _PARALLEL_MIN_TEXTS or "fork" not in mp.get_all_start_methods():
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cpus >= 2 else 0


def _content_fingerprint(dataset: TextDataset) -> str:
    h = hashlib.sha256()
    for name, split in dataset.splits().items():
        h.update(f"{name}\0{len(split)}\0".encode())
        for t in split.texts:
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        h.update(np.asarray(split.labels, np.int64).tobytes())
    return h.hexdigest()


def _labels_crc(dataset: TextDataset) -> int:
    return zlib.crc32(b"".join(np.asarray(s.labels, np.int64).tobytes() for s in dataset.splits().values()))


def encode_dataset(
    dataset: TextDataset,
    *,
    tokenizer: Tokenizer | None = None,
    max_words: int | None = 20000,
    min_freq: int = 1,
    max_len: int | None = 200,
    truncate: str = "head",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    use_cache: bool = True,
    workers: int | None = None,
) -> EncodedData:
    """Tokenise every split, build the vocabulary from the training split only, encode to ids.

    Each text keeps its first ``max_len`` tokens (``truncate="head"``), its last (``"tail"``),
    or its first ``max_len // 4`` and last ``max_len - max_len // 4`` (``"head_tail"``); ``max_len=None`` keeps all and pads to the longest. See :class:`Vocabulary`
    for ``max_words`` / ``min_freq`` (default: 20,001 ids, as in the original experiment).

    The result is cached in ``<cache_dir>/encoded/<key>/`` (default cache dir ``$RNNLAB_CACHE``
    or ``~/.cache/rnnlab``), keyed by the dataset's fingerprint, the split sizes and labels, the
    tokenizer (settings and version) and the settings above; a stale or corrupt entry is
    rebuilt, never used. Each split's ``ids`` then map the entry's ``<split>_ids.npy``
    (:func:`ids_dtype`, copy-on-write): memory holds only the rows that batches read.

    A :class:`~rnnlab.data.datasets.FileTextDataset` (CSV/TSV/JSONL from :func:`load_text_dataset`)
    whose ``streams()`` is true is encoded in a streaming pass over its files
    (:mod:`rnnlab.data.streaming`; memory: the word counts plus a chunk of rows) with the same result.

    ``workers``: processes for tokenising (None: 2 when the data has >= 20,000 texts and the
    machine has 2+ cores and ``fork``; 0 or 1: in this process). The result does not depend on it.
    """
    t0 = time.perf_counter()
    tokenizer = tokenizer or Tokenizer()
    if truncate not in TRUNCATE_CHOICES:
        raise ValueError(f"encode_dataset: truncate must be one of {', '.join(TRUNCATE_CHOICES)}, got {truncate!r}")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"encode_dataset: max_len must be an int >= 1 or None, got {max_len!r}")
    Vocabulary.check_settings(max_words, min_freq)
    splits = dataset.splits()
    for name, split in splits.items():
        bad = [y for y in split.labels if not 0 <= y < len(dataset.label_names)]
        if bad:
            raise ValueError(
                f"encode_dataset: {name} split has label {bad[0]!r}; expected ids 0..."
                f"{len(dataset.label_names) - 1} for label_names {list(dataset.label_names)}"
            )
    settings = {"max_words": max_words, "min_freq": min_freq, "max_len": max_len, "truncate": truncate}
    key = {
        "kind": "encoded",
        "version": ENCODING_VERSION,
        "fingerprint": dataset.fingerprint or _content_fingerprint(dataset),
        "tokenizer": tokenizer.to_dict(),
        **settings,
        "sizes": {k: len(v) for k, v in splits.items()},
        "labels_crc32": _labels_crc(dataset),
        "label_names": list(dataset.label_names),
    }
    cache = resolve_cache_dir(cache_dir)
    entry = cache / "encoded" / key_digest(key)
    names = list(splits)
    if use_cache:
        hit = _load_entry(entry, key, names, tokenizer, dataset.label_names, settings, t0, verify=True)
        if hit is not None:
            return hit
    if isinstance(dataset, FileTextDataset) and dataset.streams():
        from rnnlab.data.streaming import encode_stream

        return encode_stream(
            dataset,
            key,
            entry if use_cache else None,
            tokenizer=tokenizer,
            max_words=max_words,
            min_freq=min_freq,
            max_len=max_len,
            truncate=truncate,
            settings=settings,
            progress=progress,
            t0=t0,
        )
    workers = _use_parallel(splits, workers, tokenizer)
    if workers:
        vocab, encoded = _encode_parallel(splits, tokenizer, max_words, min_freq, max_len, truncate, workers, progress)
    else:
        counter: Counter = Counter()
        tokens = {}
        for name, split in splits.items():
            lists = _tokenize(split, tokenizer, name, progress)
            if name == "train":
                for t in lists:
                    counter.update(t)
            tokens[name] = _Tokens.from_lists(lists, max_len, truncate)
        vocab = Vocabulary.from_counter(counter, max_words=max_words, min_freq=min_freq)
        encoded = {name: toks.encode(vocab, max_len) for name, toks in tokens.items()}
        del tokens
    arrays: dict[str, np.ndarray] = {}
    for name, (ids, lengths, ntok) in encoded.items():
        arrays.update(
            {
                f"{name}_ids": ids.astype(ids_dtype(len(vocab)), copy=False),
                f"{name}_lengths": lengths,
                f"{name}_num_tokens": ntok,
                f"{name}_labels": np.asarray(splits[name].labels, np.int32),
            }
        )
    del encoded
    if use_cache:
        try:
            with EntryWriter(entry, key) as w:
                for name in names:
                    w.put(f"{name}_ids", arrays[f"{name}_ids"], mapped=True)
                    for k in ("lengths", "num_tokens", "labels"):
                        w.put(f"{name}_{k}", arrays[f"{name}_{k}"], dtype=np.int32)
                w.blob("vocab.json", _vocab_blob(vocab))
                w.commit({"source": dataset.source})
        except OSError:
            pass  # an unwritable cache only costs speed
        else:  # the splits are served from the files just written, as a later cache hit would be
            built = _load_entry(entry, key, names, tokenizer, dataset.label_names, settings, t0, verify=False)
            if built is not None:
                built.from_cache = False
                return built
    out = {name: _split_from_arrays(arrays, name) for name in splits}
    return EncodedData(
        out["train"],
        out["test"],
        out.get("val"),
        vocab,
        tokenizer,
        list(dataset.label_names),
        settings,
        False,
        time.perf_counter() - t0,
    )


def _vocab_blob(vocab: Vocabulary) -> bytes:
    return json.dumps(vocab.to_dict(), ensure_ascii=False).encode("utf-8")


def _load_entry(
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
        out = {name: _split_from_arrays(arrays, name) for name in names}
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


def _tokenize(split: TextSplit, tokenizer: Tokenizer, name: str, progress: bool) -> list[list[str]]:
    texts: Any = split.texts
    if progress:
        from tqdm.auto import tqdm

        texts = tqdm(texts, desc=f"tokenizing {name}", unit=" texts", leave=False, mininterval=0.5)
    return list(map(tokenizer.tokenize, texts))


def _split_from_arrays(arrays: dict[str, np.ndarray], name: str) -> EncodedSplit:
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
