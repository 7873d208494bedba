"""make_loader: padding to the batch's longest, coverage, determinism per (seed, epoch), bucketing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnlab.data import EncodedSplit, make_loader


def _split(n: int = 103, max_len: int = 40, seed: int = 0) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    ids = torch.randint(2, 50, (n, max_len), generator=g)
    ids[torch.arange(max_len) >= lengths[:, None]] = 0
    labels = torch.arange(n) % 2
    return EncodedSplit(ids, lengths, labels)


def _collect(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(loader)


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_split_once_and_match_rows(shuffle: bool, bucket: bool) -> None:
    split = _split()
    loader = make_loader(split, 16, shuffle=shuffle, seed=1, bucket=bucket)
    index_batches = loader.batches()
    batches = _collect(loader)
    assert len(batches) == len(loader) == len(index_batches) == 7
    assert sorted(np.concatenate(index_batches).tolist()) == list(range(len(split)))
    for idx, (ids, lengths, labels) in zip(index_batches, batches):
        width = int(split.lengths[idx].max())
        assert ids.shape == (len(idx), width) and ids.is_contiguous() and ids.dtype == torch.int64
        assert torch.equal(ids, split.ids[idx, :width])
        assert torch.equal(lengths, split.lengths[idx]) and torch.equal(labels, split.labels[idx])
    if shuffle:
        assert np.concatenate(index_batches).tolist() != list(range(len(split)))


def test_unshuffled_order_and_drop_last() -> None:
    split = _split()
    ids, lengths, labels = next(iter(make_loader(split, 10, shuffle=False)))
    assert torch.equal(lengths, split.lengths[:10]) and torch.equal(ids, split.ids[:10, : int(lengths.max())])
    loader = make_loader(split, 10, shuffle=True, drop_last=True)
    assert len(loader) == 10 and [len(b[0]) for b in loader] == [10] * 10
    sorted_batches = make_loader(split, 10, shuffle=False, bucket=True).batches()
    lens = split.lengths.numpy()[np.concatenate(sorted_batches)]
    assert (np.diff(lens) <= 0).all()  # evaluation with bucketing: longest first


def test_deterministic_per_seed_and_epoch() -> None:
    split = _split()
    for bucket in (False, True):
        a = make_loader(split, 16, shuffle=True, seed=3, bucket=bucket)
        b = make_loader(split, 16, shuffle=True, seed=3, bucket=bucket)
        order = lambda ld: np.concatenate(ld.batches()).tolist()  # noqa: E731
        assert order(a) == order(b)
        a.set_epoch(1)
        assert order(a) != order(b)
        b.set_epoch(1)
        assert order(a) == order(b)
        assert order(make_loader(split, 16, shuffle=True, seed=4, bucket=bucket)) != order(b)
        first = [x.clone() for x in next(iter(a))]
        assert all(torch.equal(x, y) for x, y in zip(first, next(iter(a))))


def test_bucketing_cuts_padding() -> None:
    split = _split(n=2000, max_len=200)

    def padded(loader) -> int:
        return sum(ids.numel() for ids, _, _ in loader)

    real = int(split.lengths.sum())
    plain = padded(make_loader(split, 32, shuffle=True, seed=0))
    bucketed = padded(make_loader(split, 32, shuffle=True, seed=0, bucket=True))
    assert bucketed < 1.1 * real < plain  # uniform lengths: ~2x padding without buckets, < 10% with


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        make_loader(_split(), 0, shuffle=False)


def test_drop_last_with_buckets_drops_random_examples() -> None:
    split = _split(n=1000, max_len=200)
    loader = make_loader(split, 64, shuffle=True, bucket=True, drop_last=True)
    dropped_lengths = []
    for epoch in range(8):
        batches = loader.batches(epoch)
        assert [len(b) for b in batches] == [64] * 15
        kept = np.concatenate(batches)
        assert len(set(kept.tolist())) == 960
        dropped_lengths += split.lengths.numpy()[np.setdiff1d(np.arange(1000), kept)].tolist()
    # the 40 dropped per epoch are a random sample, not the longest of the last pool
    assert 60 < np.mean(dropped_lengths) < 140
