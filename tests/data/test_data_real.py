"""The real IMDB archive (skipped when absent): counts, 20,001 ids, and the cache round trip."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnlab.data import encode_dataset, load_imdb, make_loader


def test_real_imdb_counts_vocabulary_and_cache(imdb_archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ds = load_imdb(imdb_archive, cache_dir=cache, progress=False)
    assert (len(ds.train), len(ds.test)) == (25000, 25000)
    assert ds.train.label_counts() == [12500, 12500] and ds.test.label_counts() == [12500, 12500]
    assert {m["rating"] for m in ds.train.meta} == {1, 2, 3, 4, 7, 8, 9, 10}
    train_movies, test_movies = ({m["group"] for m in s.meta} for s in (ds.train, ds.test))
    assert (len(train_movies), len(test_movies), len(train_movies & test_movies)) == (3456, 3581, 1)  # README
    data = encode_dataset(ds, cache_dir=cache, progress=False)
    assert len(data.vocab) == 20001 and data.vocab.itos[:5] == ["<pad>", "<unk>", "the", "and", "a"]
    assert data.train.ids.shape == (25000, 200) and int(data.train.lengths.min()) >= 1
    assert int(data.train.ids.max()) == 20000
    # second run: both the parsed texts and the encoding come from the cache, unchanged
    again = encode_dataset(load_imdb(imdb_archive, cache_dir=cache, progress=False), cache_dir=cache, progress=False)
    assert again.from_cache and torch.equal(again.test.ids, data.test.ids) and again.vocab == data.vocab
    val = load_imdb(imdb_archive, cache_dir=cache, val_fraction=0.1, progress=False)
    assert not {m["group"] for m in val.train.meta} & {m["group"] for m in val.val.meta}
    assert abs(len(val.val) - 2500) < 50
    ids, lengths, labels = next(iter(make_loader(data.train, 64, shuffle=True, bucket=True)))
    assert ids.shape == (64, int(lengths.max()))
