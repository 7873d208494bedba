"""Encoding: pinned ids, truncation, the training-only vocabulary, the on-disk cache (hit, stale, corrupt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.data import EncodedSplit, TextDataset, TextSplit, Tokenizer, _cache, collate, encode_dataset, encode_texts


def _dataset(fingerprint: str = "fp-1") -> TextDataset:
    train = TextSplit(["the cat sat", "the dog sat on the cat", "a cat!", "?!"], [1, 0, 1, 0])
    test = TextSplit(["the unseen cat", "dog dog dog dog dog dog"], [1, 0])
    return TextDataset(train, test, ["neg", "pos"], "memory", fingerprint)


def test_pinned_ids_lengths_and_training_only_vocabulary(tmp_path: Path) -> None:
    data = encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False)
    # counts: cat 3, the 3 (tie: by word), sat 2, then a/dog/on 1 each
    assert data.vocab.itos == ["<pad>", "<unk>", "cat", "the", "sat", "a", "dog", "on"]
    assert data.train.ids.tolist() == [[3, 2, 4, 0], [3, 6, 4, 7], [5, 2, 0, 0], [1, 0, 0, 0]]
    assert data.train.lengths.tolist() == [3, 4, 2, 1]  # "?!" has no token: one <unk>
    assert data.train.num_tokens.tolist() == [3, 6, 2, 0]
    assert data.test.ids.tolist() == [[3, 1, 2, 0], [6, 6, 6, 6]]  # "unseen" never in train -> <unk>
    assert data.train.labels.dtype == torch.int64 and data.test.labels.tolist() == [1, 0]
    assert data.train.ids.dtype == torch.int16 and data.val is None and data.label_names == ["neg", "pos"]
    assert data.train[1][0].dtype == torch.int64  # items (and batches) are int64
    ids, label = data.train[1]
    assert ids.tolist() == [3, 6, 4, 7] and int(label) == 0


def test_head_tail_truncation_keeps_a_quarter_of_head_and_the_rest_of_tail() -> None:
    from rnnlab.data.encoded import truncate_tokens as _truncate

    toks = [str(i) for i in range(20)]
    assert _truncate(toks, 8, "head_tail") == ["0", "1", "14", "15", "16", "17", "18", "19"]
    assert _truncate(toks, 3, "head_tail") == ["17", "18", "19"]  # 3 // 4 = 0 head tokens
    assert _truncate(toks, 20, "head_tail") == toks and _truncate(toks[:5], 8, "head_tail") == toks[:5]
    assert _truncate(toks, 8, "head") == toks[:8] and _truncate(toks, 8, "tail") == toks[-8:]


def test_tail_truncation_no_limit_and_encode_texts(tmp_path: Path) -> None:
    tail = encode_dataset(_dataset(), max_len=3, truncate="tail", cache_dir=tmp_path, progress=False)
    assert tail.train.ids[1].tolist() == [7, 3, 2]  # "on the cat"
    full = encode_dataset(_dataset(), max_len=None, cache_dir=tmp_path, progress=False)
    assert full.train.ids.shape == (4, 6) and full.test.ids.shape == (2, 6)
    ids, lengths = encode_texts(["the dog", "zz the cat sat"], full.tokenizer, full.vocab, max_len=3)
    assert ids.tolist() == [[3, 6, 0], [1, 3, 2]] and lengths.tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"truncate must be one of head, tail, head_tail, got 'middle'"):
        encode_dataset(_dataset(), truncate="middle", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"max_len must be an int >= 1 or None, got 0"):
        encode_dataset(_dataset(), max_len=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"min_freq must be an int >= 1, got 0"):
        encode_dataset(_dataset(), min_freq=0, cache_dir=tmp_path)
    ds = _dataset()
    ds.test.labels[1] = 2
    with pytest.raises(
        ValueError, match=r"test split has label 2; expected ids 0...1 for label_names \['neg', 'pos'\]"
    ):
        encode_dataset(ds, cache_dir=tmp_path)


def test_cache_hit_skips_tokenizing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False)
    assert not first.from_cache
    monkeypatch.setattr(Tokenizer, "tokenize", lambda self, text: pytest.fail("tokenized on a cache hit"))
    hit = encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False)
    assert hit.from_cache and hit.vocab == first.vocab
    for a, b in zip(hit.splits().values(), first.splits().values()):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.lengths, b.lengths) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("change", ["max_len", "max_words", "fingerprint", "labels", "tokenizer_version"])
def test_stale_cache_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False)
    ds, kw = _dataset(), {"max_len": 4}
    if change == "max_len":
        kw["max_len"] = 5
    elif change == "max_words":
        kw["max_words"] = 3
    elif change == "fingerprint":
        ds = _dataset("fp-2")
    elif change == "labels":
        ds.test.labels[0] = 0
    else:
        monkeypatch.setattr(Tokenizer, "VERSION", "words-test")
    again = encode_dataset(ds, cache_dir=tmp_path, progress=False, **kw)
    assert not again.from_cache
    assert again.test.labels.tolist() == ds.test.labels


@pytest.mark.parametrize("damage", ["flip_ids", "truncate_ids", "manifest", "delete_vocab"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    first = encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False)
    expected = first.train.ids.clone()  # first's ids map the file: damage in place would show through them
    (entry,) = (tmp_path / "encoded").iterdir()
    target = entry / "train_ids.npy"
    if damage == "flip_ids":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate_ids":
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "manifest":
        (entry / "manifest.json").write_text('{"format": 1, "key": ')
    else:
        (entry / "vocab.json").unlink()
    again = encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and torch.equal(again.train.ids, expected)
    assert encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False).from_cache  # repaired


def test_failed_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = _cache.ArrayWriter.write
    calls = []

    def failing_write(self, chunk):
        calls.append(self.path.name)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(self, chunk)

    monkeypatch.setattr(_cache.ArrayWriter, "write", failing_write)
    data = encode_dataset(_dataset(), max_len=4, cache_dir=tmp_path, progress=False)
    assert data.train.lengths.tolist() == [3, 4, 2, 1]  # the result is still returned
    assert list((tmp_path / "encoded").iterdir()) == []  # neither an entry nor a temporary folder


def test_parallel_tokenizing_matches_serial(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "don't", "it's", "x"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 12))) + "!" for _ in range(70)]
    assert "!" in texts  # a text without tokens
    ds = TextDataset(
        TextSplit(texts[:40], [i % 2 for i in range(40)]),
        TextSplit(texts[40:60], [0, 1] * 10),
        ["a", "b"],
        "memory",
        "fp-par",
        val=TextSplit(texts[60:], [0, 1] * 5),
    )
    for truncate in ("head", "tail", "head_tail"):
        serial = encode_dataset(ds, max_len=5, truncate=truncate, use_cache=False, progress=False, workers=0)
        par = encode_dataset(ds, max_len=5, truncate=truncate, use_cache=False, progress=False, workers=2)
        assert par.vocab == serial.vocab and par.vocab.counts == serial.vocab.counts
        assert list(par.splits()) == ["train", "val", "test"]
        for a, b in zip(par.splits().values(), serial.splits().values()):
            assert torch.equal(a.ids, b.ids) and torch.equal(a.num_tokens, b.num_tokens)
            assert torch.equal(a.lengths, b.lengths) and torch.equal(a.labels, b.labels)


def test_dataset_without_fingerprint_is_keyed_by_content(tmp_path: Path) -> None:
    encode_dataset(_dataset(""), max_len=4, cache_dir=tmp_path, progress=False)
    ds = _dataset("")
    ds.train.texts[0] = "the cat sat down"
    changed = encode_dataset(ds, max_len=4, cache_dir=tmp_path, progress=False)
    assert not changed.from_cache and changed.train.lengths.tolist()[0] == 4


def test_collate_pads_items() -> None:
    split = EncodedSplit(torch.tensor([[5, 6, 0], [7, 0, 0]]), torch.tensor([2, 1]), torch.tensor([1, 0]))
    ids, lengths, labels = collate([split[1], split[0]])
    assert ids.tolist() == [[7, 0], [5, 6]] and lengths.tolist() == [1, 2] and labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"expected ids \(N, L\), lengths \(N,\), labels \(N,\)"):
        EncodedSplit(torch.zeros(2, 3), torch.zeros(3), torch.zeros(2))
