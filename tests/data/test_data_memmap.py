"""Memory-mapped encoded cache (round trip, file-backed ids, corruption -> rebuild) and the streaming encoder."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.data import (
    DataError,
    EncodedData,
    EncodedSplit,
    FileTextDataset,
    TextDataset,
    TextSplit,
    _cache,
    datasets,
    encode_dataset,
    encode_files,
    encoding,
    load_dataset,
    load_text_dataset,
    make_loader,
    streaming,
)


def _memory_dataset(fingerprint: str = "fp-mm") -> TextDataset:
    rng = np.random.default_rng(1)
    words = ["good", "bad", "film", "plot", "don't", "it's", "x", "the"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 9)))) + "!" for _ in range(30)]
    labels = [i % 2 for i in range(30)]
    return TextDataset(
        TextSplit(texts[:20], labels[:20]),
        TextSplit(texts[20:26], labels[20:26]),
        ["neg", "pos"],
        "memory",
        fingerprint,
        val=TextSplit(texts[26:], labels[26:]),
    )


def _equal(a: EncodedData, b: EncodedData) -> None:
    assert a.vocab.itos == b.vocab.itos and a.vocab.counts == b.vocab.counts and a.label_names == b.label_names
    assert list(a.splits()) == list(b.splits())
    for x, y in zip(a.splits().values(), b.splits().values()):
        assert x.ids.dtype == y.ids.dtype == torch.int16 and torch.equal(x.ids, y.ids)
        for k in ("lengths", "num_tokens", "labels"):
            assert torch.equal(getattr(x, k), getattr(y, k)), k


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file that the memory at ``t.data_ptr()`` is mapped from (Linux /proc/self/maps), else None."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= ptr < hi:
            return parts[5] if len(parts) == 6 else None
    return None


needs_proc = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")


@needs_proc
def test_cached_ids_are_mapped_from_the_cache_file_and_round_trip(tmp_path: Path) -> None:
    memory = encode_dataset(_memory_dataset(), max_len=5, use_cache=False, progress=False)
    built = encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    hit = encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    assert not built.from_cache and hit.from_cache
    _equal(memory, built)
    _equal(memory, hit)
    (entry,) = (tmp_path / "encoded").iterdir()
    for name, split in hit.splits().items():
        assert _mapped_file(split.ids) == str(entry / f"{name}_ids.npy")
        assert not split.ids.numpy().flags.owndata
    assert _mapped_file(memory.train.ids) is None or not _mapped_file(memory.train.ids).endswith(".npy")
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["files"]["train_ids.npy"]["shape"] == [20, 5] and manifest["files"]["train_ids.npy"]["mapped"]
    assert np.load(entry / "val_ids.npy").tolist() == memory.val.ids.tolist()


def _damage(entry: Path, damage: str) -> None:
    if damage.startswith("flip_"):
        target = entry / f"train_{damage[5:]}.npy"
        data = bytearray(target.read_bytes())
        data[-1] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate_ids":
        target = entry / "train_ids.npy"
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "ids_header":  # (20, 5) -> (21, 5): a consistent-looking but wrong shape
        target = entry / "train_ids.npy"
        target.write_bytes(target.read_bytes().replace(b"(20, 5)", b"(21, 5)", 1))
    elif damage == "manifest":
        (entry / "manifest.json").write_text('{"format": 2, "key": ')
    elif damage.startswith("missing_"):
        (entry / f"{damage[8:]}").unlink()
    else:
        raise AssertionError(damage)


@pytest.mark.parametrize(
    "damage",
    [
        "flip_lengths",
        "flip_labels",
        "flip_num_tokens",
        "flip_ids",
        "truncate_ids",
        "ids_header",
        "manifest",
        "missing_test_ids.npy",
        "missing_val_labels.npy",
        "missing_vocab.json",
    ],
)
def test_corrupt_entry_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    expected = encode_dataset(_memory_dataset(), max_len=5, use_cache=False, progress=False)
    encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    (entry,) = (tmp_path / "encoded").iterdir()
    _damage(entry, damage)
    again = encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    assert not again.from_cache
    _equal(again, expected)
    repaired = encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    assert repaired.from_cache
    _equal(repaired, expected)


def test_full_check_once_then_stamp_and_a_write_after_the_stamp_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cache, "RACY_SECONDS", 0.0)
    real_crc, calls = _cache._file_crc, []
    monkeypatch.setattr(_cache, "_file_crc", lambda p: calls.append(Path(p).name) or real_crc(p))
    expected = encode_dataset(_memory_dataset(), max_len=5, use_cache=False, progress=False)
    encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    assert calls == []  # the writer computed the CRCs while writing: no read-back
    (entry,) = (tmp_path / "encoded").iterdir()
    time.sleep(0.05)  # the damage below must land in a later file-system clock tick than the build
    assert encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False).from_cache
    assert sorted(calls) == ["test_ids.npy", "train_ids.npy", "val_ids.npy"]  # one full check per mapped file
    stamps = json.loads((entry / "verified.json").read_text())
    assert sorted(stamps) == sorted(calls)
    calls.clear()
    assert encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False).from_cache
    assert calls == []  # stamped: the mapped data is not read again
    _damage(entry, "flip_ids")  # same size, same header: only the stamp (ctime) reveals the write
    again = encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and calls == ["train_ids.npy"]
    _equal(again, expected)


def test_a_freshly_written_file_is_not_stamped(tmp_path: Path) -> None:
    encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    assert encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False).from_cache
    (entry,) = (tmp_path / "encoded").iterdir()
    assert not (entry / "verified.json").exists()  # changed < RACY_SECONDS ago: checked in full next time too


# ------------------------------------------------------------------------------------------- streaming

WORDS = ["good", "bad", "great", "awful", "film", "plot", "don't", "it's", "the", "a", "x", "y"]


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(0, 14))
        text = " ".join(rng.choice(WORDS, size=k)) + ("!" if i % 7 else " <br />?")
        rows.append({"text": text if text.strip() else "?", "label": ["neg", "pos", "mid"][i % 3], "doc": f"d{i // 3}"})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["text", "label", "doc"], delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    return path


def _in_memory(ds: TextDataset) -> TextDataset:
    """The same splits as plain in-memory TextSplits (read through the lazy dataset's texts)."""
    copy = {name: TextSplit(list(s.texts), list(s.labels), list(s.meta)) for name, s in ds.splits().items()}
    return TextDataset(copy["train"], copy["test"], list(ds.label_names), ds.source, ds.fingerprint, copy.get("val"))


@pytest.mark.parametrize(
    "fmt,val_fraction,group,max_len,truncate",
    [
        ("csv", 0.0, None, 6, "head"),
        ("tsv", 0.25, None, 6, "tail"),
        ("jsonl", 0.0, None, None, "head"),
        ("jsonl", 0.2, "doc", 5, "head_tail"),
        ("csv", 0.3, "doc", 4, "tail"),
    ],
)
def test_streaming_encoder_equals_the_in_memory_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    val_fraction: float,
    group: str | None,
    max_len: int | None,
    truncate: str,
) -> None:
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 7)  # several chunks per split
    path = _write(tmp_path / f"d.{fmt}", _rows(90))
    kw = dict(val_fraction=val_fraction, group_column=group, seed=3, test_fraction=0.25)
    streamed = encode_files(
        path, max_words=8, max_len=max_len, truncate=truncate, cache_dir=tmp_path / "c", progress=False, **kw
    )
    lazy = load_text_dataset(path, stream=False, **kw)
    assert isinstance(lazy, FileTextDataset)
    memory = encode_dataset(
        _in_memory(lazy), max_words=8, max_len=max_len, truncate=truncate, use_cache=False, progress=False, workers=0
    )
    _equal(streamed, memory)
    assert len(streamed.train) + len(streamed.test) + (len(streamed.val) if streamed.val else 0) == 90
    assert (streamed.val is not None) == (val_fraction > 0)
    if group:  # whole groups on one side, as in memory
        sides = [{m["group"] for m in s.meta} for s in lazy.splits().values()]
        assert all(not (a & b) for i, a in enumerate(sides) for b in sides[i + 1 :])
    # the same cache entry serves the in-memory path of the same file (identical key and content)
    again = encode_dataset(
        lazy, max_words=8, max_len=max_len, truncate=truncate, cache_dir=tmp_path / "c", progress=False
    )
    assert again.from_cache
    _equal(again, memory)


def test_separate_test_file_and_uncached_streaming(tmp_path: Path) -> None:
    rows = _rows(40, seed=5)
    train, test = _write(tmp_path / "train.jsonl", rows[:30]), _write(tmp_path / "test.csv", rows[30:])
    streamed = encode_files(train, test, max_len=5, use_cache=False, progress=False)
    memory = encode_dataset(
        _in_memory(load_text_dataset(train, test, stream=False)), max_len=5, use_cache=False, progress=False, workers=0
    )
    _equal(streamed, memory)
    assert len(streamed.test) == 10 and streamed.test.ids.tolist() == memory.test.ids.tolist()


def test_load_dataset_streams_large_files_through_encode_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "big.jsonl", _rows(60))
    expected = encode_dataset(
        _in_memory(load_text_dataset(path, val_fraction=0.2, stream=False)),
        max_len=6,
        use_cache=False,
        progress=False,
        workers=0,
    )
    monkeypatch.setattr(datasets, "STREAM_MIN_BYTES", 0)  # every file counts as large
    fail = lambda *a, **k: pytest.fail("in-memory encoding used for a large file")  # noqa: E731
    monkeypatch.setattr(encoding, "_tokenize", fail)
    monkeypatch.setattr(encoding, "_encode_parallel", fail)
    ds = load_dataset(path, val_fraction=0.2, val_split="group", seed=0)  # as rnnlab.train.runner.load_data calls it
    assert isinstance(ds, FileTextDataset) and ds.streams()
    data = encode_dataset(ds, max_len=6, cache_dir=tmp_path / "c", progress=False)
    _equal(data, expected)
    monkeypatch.setattr(datasets, "STREAM_MIN_BYTES", path.stat().st_size + 1)
    assert not load_dataset(path).streams()


def test_streaming_refuses_a_file_changed_after_loading(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", _rows(30))
    ds = load_text_dataset(path, stream=True)
    rows = _rows(30)
    rows[4]["text"] = "changed text"
    _write(path, rows)
    with pytest.raises(DataError, match=r"d.csv: the file changed since it was loaded \(30 rows"):
        encode_dataset(ds, cache_dir=tmp_path / "c", progress=False)
    assert not list(tmp_path.glob("c/**/*.npy"))  # nothing half-written left behind


def test_bad_inputs_give_the_same_errors_when_streaming(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("body,label\nx,a\n", "utf-8")
    with pytest.raises(DataError, match=r"d.csv: no column\(s\) \['text'\]; expected columns \['text', 'label'\]"):
        encode_files(path, use_cache=False, progress=False)
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.5}\n', "utf-8")
    with pytest.raises(
        DataError,
        match=r"d.jsonl:2: missing or invalid label in column 'label': 1.5; expected a "
        r"string or an integer",
    ):
        encode_files(jl, use_cache=False, progress=False)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n", "utf-8")
    with pytest.raises(DataError, match=r"e.jsonl: no rows; expected one JSON object per line"):
        encode_files(empty, use_cache=False, progress=False)
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\nfine\ta\n  \tb\n", "utf-8")
    with pytest.raises(DataError, match=r"d.tsv:3: empty or missing text in column 'text'"):
        encode_files(tsv, use_cache=False, progress=False)


def test_crlf_bare_cr_and_bad_utf8_rows_stream_like_memory(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    body = 'text,label\r\n"a ""quoted""\r\nline",x\r\nplain caf\xe9,y\rthird one,x\r\nfourth,y\n'
    path.write_bytes(body.encode("latin-1"))
    with pytest.warns(UnicodeWarning, match=r"d.csv: bytes that are not UTF-8"):
        ds = load_text_dataset(path, path, stream=True)
    assert ds.train.texts == ['a "quoted"\r\nline', "plain caf\ufffd", "third one", "fourth"]
    assert ds.train.labels == [0, 1, 0, 1]
    streamed = encode_dataset(ds, max_len=4, use_cache=False, progress=False)
    memory = encode_dataset(_in_memory(ds), max_len=4, use_cache=False, progress=False, workers=0)
    _equal(streamed, memory)


def test_streaming_read_back_waits_for_a_concurrent_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "d.jsonl", _rows(30))
    expected = encode_files(path, max_len=5, use_cache=False, progress=False)
    real, calls = streaming.load_entry, []

    def swapping(*a, **k):  # the first read-back lands while another process swaps its entry in
        calls.append(1)
        return None if len(calls) == 1 else real(*a, **k)

    monkeypatch.setattr(streaming, "load_entry", swapping)
    monkeypatch.setattr(streaming.time, "sleep", lambda s: None)
    _equal(encode_files(path, max_len=5, cache_dir=tmp_path / "c", progress=False), expected)
    assert len(calls) == 2


def test_ids_dtype_is_the_narrowest_signed_type_for_the_vocabulary() -> None:
    assert encoding.ids_dtype(20001) is np.int16 and encoding.ids_dtype(1 << 15) is np.int16
    assert encoding.ids_dtype((1 << 15) + 1) is np.int32 and encoding.ids_dtype(1 << 31) is np.int32
    with pytest.raises(ValueError, match=r"at most 2\*\*31 ids are supported, got a vocabulary of 2147483649"):
        encoding.ids_dtype((1 << 31) + 1)


def test_a_vocabulary_over_32768_ids_is_stored_as_int32_and_batches_are_int64(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(40000)]  # about 36,000 in the training rows: too many ids for int16
    rows = [{"text": " ".join(words[i : i + 100]), "label": i // 100 % 2, "doc": str(i)} for i in range(0, 40000, 100)]
    rows += [{"text": " ".join(words[-3:] + ["unseen"]), "label": 0, "doc": "t"}] * 40
    path = _write(tmp_path / "big.jsonl", rows)
    kw = dict(max_words=50000, max_len=120, progress=False)
    streamed = encode_files(path, test_fraction=0.1, seed=0, cache_dir=tmp_path / "c", **kw)
    lazy = load_text_dataset(path, test_fraction=0.1, seed=0, stream=False)
    memory = encode_dataset(_in_memory(lazy), use_cache=False, workers=0, **kw)
    cached = encode_dataset(lazy, cache_dir=tmp_path / "c", **kw)
    assert cached.from_cache and len(memory.vocab) > 1 << 15
    for data in (streamed, memory, cached):
        assert data.train.ids.dtype == torch.int32 and int(data.train.ids.max()) >= 1 << 15
        assert torch.equal(data.train.ids, memory.train.ids) and torch.equal(data.test.ids, memory.test.ids)
    (entry,) = (tmp_path / "c" / "encoded").iterdir()
    assert np.load(entry / "train_ids.npy", mmap_mode="r").dtype == np.int32
    ids, lengths, labels = next(iter(make_loader(cached.train, 8, shuffle=False)))
    assert ids.dtype == lengths.dtype == labels.dtype == torch.int64 and int(ids.max()) >= 1 << 15


def test_default_vocabulary_ids_take_two_bytes_per_token_on_disk(tmp_path: Path) -> None:
    data = encode_dataset(_memory_dataset(), max_len=5, cache_dir=tmp_path, progress=False)
    (entry,) = (tmp_path / "encoded").iterdir()
    mapped = np.load(entry / "train_ids.npy", mmap_mode="r")
    assert mapped.dtype == np.int16 and data.train.ids.dtype == torch.int16
    assert (entry / "train_ids.npy").stat().st_size == mapped.offset + 20 * 5 * 2
    assert data.train[0][0].dtype == torch.int64


def test_an_encoded_split_refuses_non_integer_ids() -> None:
    with pytest.raises(ValueError, match="EncodedSplit: expected integer ids, got dtype torch.float32"):
        EncodedSplit(torch.zeros(2, 3), torch.ones(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
