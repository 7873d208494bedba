"""Tokenise, build the vocabulary and encode a :class:`TextDataset` into padded id tensors, cached on disk.

The cache entry holds each split's ids as a memory-mapped ``(N, L)`` ``.npy`` file of the narrowest
signed integer type that holds the vocabulary (:func:`ids_dtype`: int16, 2 bytes per token, up to
32,768 ids), so a loaded split costs memory only for the rows a batch reads (see
``rnnlab.data._cache``); large CSV/TSV/JSONL files are encoded in a streaming pass straight into
such files (``rnnlab.data.streaming``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import zlib
from collections import Counter
from itertools import chain
from typing import Any

import numpy as np

from rnnlab.data._cache import EntryWriter, key_digest, resolve_cache_dir
from rnnlab.data.datasets import FileTextDataset, TextDataset, TextSplit, load_text_dataset
from rnnlab.data.encoded import (
    TRUNCATE_CHOICES,
    EncodedData,
    EncodedSplit,
    TokenRows,
    collate,
    encode_texts,
    fill_rows,
    ids_dtype,
    load_entry,
    lookup_dtype,
    split_from_arrays,
    truncate_tokens,
    vocab_blob,
)
from rnnlab.data.streaming import encode_stream
from rnnlab.data.tokenizer import Tokenizer
from rnnlab.data.vocab import Vocabulary
from rnnlab.errors import DataError

__all__ = ["EncodedData", "EncodedSplit", "collate", "encode_dataset", "encode_files", "encode_texts", "ids_dtype"]

#: Bump when the encoding itself changes (invalidates cached encodings).
#: 3: ids stored as int16/int32 (:func:`ids_dtype`) instead of int64.
ENCODING_VERSION = 3


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
        parts.append(" ".join(truncate_tokens(toks, max_len, truncate)))
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
    flat = np.fromiter(map(get, chain.from_iterable(truncate_tokens(t, max_len, truncate) for t in lists)), dtype)
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
            _SHARED.update(joined=[j for _, j, _ in counted], stoi=vocab.stoi, dtype=lookup_dtype(vocab))
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
        out[name] = fill_rows(np.concatenate([f for f, _ in parts]), kept, total, max_len, vocab)
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
        raise DataError(f"encode_dataset: truncate must be one of {', '.join(TRUNCATE_CHOICES)}, got {truncate!r}")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
        raise DataError(f"encode_dataset: max_len must be an int >= 1 or None, got {max_len!r}")
    Vocabulary.check_settings(max_words, min_freq)
    splits = dataset.splits()
    for name, split in splits.items():
        bad = [y for y in split.labels if not 0 <= y < len(dataset.label_names)]
        if bad:
            raise DataError(
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
        hit = load_entry(entry, key, names, tokenizer, dataset.label_names, settings, t0, verify=True)
        if hit is not None:
            return hit
    if isinstance(dataset, FileTextDataset) and dataset.streams():
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
            tokens[name] = TokenRows.from_lists(lists, max_len, truncate)
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
                w.blob("vocab.json", vocab_blob(vocab))
                w.commit({"source": dataset.source})
        except OSError:
            pass  # an unwritable cache only costs speed
        else:  # the splits are served from the files just written, as a later cache hit would be
            built = load_entry(entry, key, names, tokenizer, dataset.label_names, settings, t0, verify=False)
            if built is not None:
                built.from_cache = False
                return built
    out = {name: split_from_arrays(arrays, name) for name in splits}
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


def _tokenize(split: TextSplit, tokenizer: Tokenizer, name: str, progress: bool) -> list[list[str]]:
    texts: Any = split.texts
    if progress:
        from tqdm.auto import tqdm

        texts = tqdm(texts, desc=f"tokenizing {name}", unit=" texts", leave=False, mininterval=0.5)
    return list(map(tokenizer.tokenize, texts))


def encode_files(
    train: str | os.PathLike,
    test: str | os.PathLike | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    max_words: int | None = 20000,
    min_freq: int = 1,
    max_len: int | None = 200,
    truncate: str = "head",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    use_cache: bool = True,
) -> EncodedData:
    """``load_text_dataset(..., stream=True)`` then ``encode_dataset``: a streaming encode of any size.

    Arguments as in :func:`load_text_dataset` and :func:`encode_dataset`; the splits' ids are
    memory-mapped from ``<cache_dir>/encoded/<key>/`` (a temporary folder, removed once mapped,
    when ``use_cache=False``).
    """
    dataset = load_text_dataset(
        train,
        test,
        text_column=text_column,
        label_column=label_column,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        group_column=group_column,
        seed=seed,
        stream=True,
    )
    return encode_dataset(
        dataset,
        tokenizer=tokenizer,
        max_words=max_words,
        min_freq=min_freq,
        max_len=max_len,
        truncate=truncate,
        cache_dir=cache_dir,
        progress=progress,
        use_cache=use_cache,
    )
