"""Encode CSV/TSV/JSONL files larger than memory in a streaming pass, into memory-mapped cache files.

    from rnnlab.data import encode_files                # rnnlab.data.encoding.encode_files
    data = encode_files("reviews.jsonl", val_fraction=0.1, max_len=64)   # any size
    data.train.ids                                    # (N, 64) int16, mapped from the cache file

Three sequential reads of the files, none of which holds the corpus:

0. ``load_text_dataset`` scans the rows: validates them, keeps each row's label id and group and
   the file's SHA-256; the test/validation membership of every row follows from these alone
   (seeded, exactly as for data held in memory);
1. tokenise the training rows and count words -> the vocabulary (with ``max_len=None`` also every
   row's token count, which fixes each split's width);
2. tokenise every row again, truncate, look the ids up, and append them ``CHUNK_ROWS`` rows at a
   time to its split's ``(N, L)`` ``.npy`` file (rows of a split come in file order, so each file is
   written sequentially and CRC-32'd as it goes).

Memory: the word counts, ``(R,)`` label/side arrays and one chunk of token lists. Both reads check
the file's row count and SHA-256 against the scan, so a file changed meanwhile is refused rather
than cached under the old fingerprint. The result (ids, lengths, num_tokens, labels, vocabulary) is
equal to :func:`encode_dataset` on the same texts in memory: both use the same tokenizer,
``Vocabulary.from_counter``, ``truncate_tokens`` and ``fill_rows``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.data._cache import EntryWriter
from rnnlab.data.datasets import SIDES, FileTextDataset
from rnnlab.data.encoded import EncodedData, TokenRows, ids_dtype, load_entry, vocab_blob
from rnnlab.data.tokenizer import Tokenizer
from rnnlab.data.vocab import Vocabulary

#: Rows tokenised and written per chunk in pass 2 (per split).
CHUNK_ROWS = 4096


def _rows(dataset: FileTextDataset, progress: bool, desc: str) -> Iterator[str]:
    it: Any = dataset.iter_texts()
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(dataset.side), desc=desc, unit=" rows", leave=False, mininterval=0.5)
    return it


def encode_stream(
    dataset: FileTextDataset,
    key: dict[str, Any],
    entry: Path | None,
    *,
    tokenizer: Tokenizer,
    max_words: int | None,
    min_freq: int,
    max_len: int | None,
    truncate: str,
    settings: dict[str, Any],
    progress: bool,
    t0: float,
) -> EncodedData:
    """Encode ``dataset`` in two streaming passes into the cache entry ``entry`` (None: a temporary one).

    Called by :func:`encode_dataset` (which checked the settings and missed the cache) with its key.
    """
    side = dataset.side  # (R,) int8: 0 train, 1 val, 2 test
    splits = dataset.splits()
    names = list(splits)
    code_name = {code: name for name, code in SIDES.items()}
    tokenize = tokenizer.tokenize

    # Pass 1: word counts over the training rows (and every row's token count when max_len is None).
    counter: Counter = Counter()
    totals = np.zeros(len(side), np.int64) if max_len is None else None
    is_train = (side == SIDES["train"]).tolist()
    for r, text in enumerate(_rows(dataset, progress, "counting words")):
        if is_train[r]:
            toks = tokenize(text)
            counter.update(toks)
        elif totals is None:
            continue
        else:
            toks = tokenize(text)
        if totals is not None:
            totals[r] = len(toks)
    vocab = Vocabulary.from_counter(counter, max_words=max_words, min_freq=min_freq)
    del counter
    widths = {
        name: int(max_len) if max_len is not None else int(np.maximum(totals[side == SIDES[name]], 1).max())  # type: ignore[index]
        for name in names
    }

    # Pass 2: tokenise, truncate, look up, append each split's chunk to its .npy file.
    tmp_root = None
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        if not os.access(entry.parent, os.W_OK):  # an unwritable cache: encode into a temporary folder
            entry = None
    if entry is None:
        tmp_root = Path(tempfile.mkdtemp(prefix="rnnlab-encode-"))
        entry = tmp_root / "entry"
    try:
        with EntryWriter(entry, key) as w:
            ids_out = {
                name: w.array(f"{name}_ids", (len(splits[name]), widths[name]), ids_dtype(len(vocab)), mapped=True)
                for name in names
            }
            small = {name: {"lengths": [], "num_tokens": []} for name in names}  # type: dict[str, dict[str, list]]
            pending: dict[str, list[list[str]]] = {name: [] for name in names}

            def flush(name: str) -> None:
                toks = TokenRows.from_lists(pending[name], max_len, truncate)
                ids, lengths, ntok = toks.encode(vocab, widths[name])
                ids_out[name].write(ids)
                small[name]["lengths"].append(lengths)
                small[name]["num_tokens"].append(ntok)
                pending[name] = []

            for s, text in zip(side.tolist(), _rows(dataset, progress, "encoding")):
                name = code_name[s]
                pending[name].append(tokenize(text))
                if len(pending[name]) == CHUNK_ROWS:
                    flush(name)
            for name in names:
                if pending[name]:
                    flush(name)
                for k in ("lengths", "num_tokens"):
                    w.put(
                        f"{name}_{k}",
                        np.concatenate(small[name][k]) if small[name][k] else np.zeros(0, np.int32),
                        dtype=np.int32,
                    )
                w.put(f"{name}_labels", splits[name].label_array, dtype=np.int32)
            w.blob("vocab.json", vocab_blob(vocab))
            w.commit({"source": dataset.source, "streamed": True})
        for _ in range(50):  # a concurrent writer of the same key may be swapping its equal entry in
            data = load_entry(entry, key, names, tokenizer, dataset.label_names, settings, t0, verify=False)
            if data is not None:
                break
            time.sleep(0.1)
    finally:
        if tmp_root is not None:  # the mapped files stay readable until unmapped (POSIX)
            shutil.rmtree(tmp_root, ignore_errors=True)
    if data is None:
        raise RuntimeError(f"{entry}: the encoded entry just written could not be read back")
    data.from_cache = False
    data.seconds = time.perf_counter() - t0
    return data
