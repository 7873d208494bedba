"""Batches of padded ids for training and evaluation, optionally bucketed by length."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from rnnlab.data.encoding import EncodedSplit

#: Bucketed batching sorts pools of this many batches by length.
POOL_BATCHES = 50


class BatchLoader:
    """Iterate ``(ids (N, L_batch), lengths (N,), labels (N,))`` over an :class:`EncodedSplit`.

    ``L_batch = max(lengths)`` of the batch: each batch is a contiguous slice ``ids[idx, :L_batch]``
    of the split's padded matrix, so no per-example Python work happens per batch.

    - ``shuffle=False``: examples in order (``bucket=True``: sorted by length, longest first).
    - ``shuffle=True``: a permutation drawn from ``(seed, epoch)``; with ``bucket=True`` the
      permutation is cut into pools of ``POOL_BATCHES`` batches, each pool is sorted by length
      (stable, so ties stay in random order) and cut into batches, and the batches are shuffled.
      Batches then hold similar lengths (little padding) and still differ from epoch to epoch.

    ``drop_last=True`` drops ``N mod batch_size`` examples so that every batch is full: the
    last ones in order, or (shuffled) random ones, drawn before bucketing so that they are not
    biased towards long texts.

    Deterministic: the same ``(seed, epoch)`` gives the same batches; call :meth:`set_epoch`
    before each epoch (or pass ``epoch`` to ``iter_epoch``).
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        bucket: bool = False,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"make_loader: batch_size must be an int >= 1, got {batch_size!r}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle, self.seed, self.bucket, self.drop_last = bool(shuffle), int(seed), bool(bucket), bool(drop_last)
        self.epoch = 0
        self._lengths = split.lengths.numpy()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """The index batches of an epoch (default: the current one)."""
        n, b = len(self.split), self.batch_size
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
        else:
            rng = None
            order = np.arange(n)
        if self.drop_last and rng is not None and n % b:
            order = order[: n - n % b]  # drop random examples, not the longest of the last pool
            n = len(order)
        if self.bucket:
            if rng is None:
                order = np.argsort(-self._lengths, kind="stable")
            else:
                pool = b * POOL_BATCHES
                order = (
                    np.concatenate(
                        [
                            chunk[np.argsort(self._lengths[chunk], kind="stable")]
                            for chunk in np.split(order, range(pool, n, pool))
                        ]
                    )
                    if n
                    else order
                )
        stop = n - n % b if self.drop_last else n
        out = [order[i : i + b] for i in range(0, stop, b)]
        if self.bucket and rng is not None:  # the one short batch, if any, is shuffled like the others
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ids, lengths, labels = self.split.ids, self.split.lengths, self.split.labels
        lens = self._lengths
        for idx in self.batches():
            width = int(lens[idx].max()) if len(idx) else 0
            t = torch.from_numpy(idx)
            yield ids[:, :width].index_select(0, t).long(), lengths.index_select(0, t), labels.index_select(0, t)


def make_loader(
    split: EncodedSplit, batch_size: int, *, shuffle: bool, seed: int = 0, bucket: bool = False, drop_last: bool = False
) -> BatchLoader:
    """Batches ``(ids (N, L_batch), lengths (N,), labels (N,))`` padded to the batch's longest sequence.

    See :class:`BatchLoader` for the order of examples; deterministic for a given seed and epoch
    (``loader.set_epoch(e)``).
    """
    return BatchLoader(split, batch_size, shuffle=shuffle, seed=seed, bucket=bucket, drop_last=drop_last)
