r"""The wide part of a wide-and-deep classifier: a linear model over NB-weighted n-gram indicators.

Shapes: N reviews, L padded length, V vocabulary size (ids 0 = padding, 1 = ``<unk>``), n the
largest n-gram order, F the n-grams of the table, C classes.

For a review with ids :math:`w_1 \dots w_T` (the classifier's own ids, after truncation),
:math:`\hat{x} \in \{0, 1\}^F` marks which table n-grams (orders 1..n, none holding padding or
``<unk>``) occur in it at least once. With the naive-Bayes log-count ratios
:math:`r \in \mathbb{R}^{F \times C}` of the **training** reviews and learned weights
:math:`W \in \mathbb{R}^{F \times C}`:

.. math::

    \mathrm{wide}(x)_c = \sum_f \hat{x}_f \, r_{f,c} \, W_{f,c}, \qquad
    r_{f,c} = \log \frac{(\alpha + d_{f,c}) / \sum_g (\alpha + d_{g,c})}
                        {(\alpha + \bar{d}_{f,c}) / \sum_g (\alpha + \bar{d}_{g,c})}

where :math:`d_{f,c}` is the number of training reviews of class c holding n-gram f and
:math:`\bar{d}_{f,c}` that of the other classes (one class against the rest; with two classes
:math:`r_{f,0} = -r_{f,1}`, Wang & Manning's NBSVM ratio). The table holds the n-grams found in at
least ``min_count`` training reviews, so nothing of the validation or test reviews enters it.

N-gram keys (int64): order k starting at position s is
:math:`o_k + \sum_{j<k} w_{s+j} V^{k-1-j}` with :math:`o_k = \sum_{i=1}^{k-1} V^i`, so orders
never collide.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Largest n-gram order supported (keys must fit in int64 with room for the per-row packing).
MAX_ORDER = 3
_FIRST_WORD_ID = 2  # ids 0 (padding) and 1 (<unk>) never form an n-gram


def key_space(vocab_size: int, n: int) -> int:
    """Number of distinct keys of orders 1..n: :math:`\\sum_{k=1}^n V^k`."""
    return sum(vocab_size**k for k in range(1, n + 1))


def ngram_keys(ids: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """``ids (N, L)`` -> ``keys (N, K)`` int64 of every n-gram of orders 1..n; -1 where invalid.

    ``K = sum_{k=1}^n (L - k + 1)``: all unigrams (by position), then all bigrams, ... An n-gram
    is invalid when any of its ids is padding (0) or ``<unk>`` (1).
    """
    if not 1 <= n <= MAX_ORDER:
        raise ValueError(f"wide n-grams: the order must be 1..{MAX_ORDER}, got {n}")
    ids = ids.long()
    real = ids >= _FIRST_WORD_ID
    key, ok = ids, real
    parts = [torch.where(ok, key, -1)]
    offset = 0
    for k in range(2, n + 1):
        if ids.shape[1] < k:
            break
        offset += vocab_size ** (k - 1)
        key = key[:, :-1] * vocab_size + ids[:, k - 1 :]  # (N, L - k + 1): ids[s .. s+k-1]
        ok = ok[:, :-1] & real[:, k - 1 :]
        parts.append(torch.where(ok, key + offset, -1))
    return torch.cat(parts, dim=1)


def _unique_per_row(keys: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid entries (>= 0, < width) of ``keys (B, K)`` once per row: ``(rows (M,), values (M,))``, sorted."""
    b = keys.shape[0]
    rows = torch.arange(b, device=keys.device).unsqueeze(1).expand_as(keys)
    valid = keys >= 0
    packed = torch.unique(rows[valid] * width + keys[valid])
    return packed // width, packed % width


@torch.no_grad()
def ngram_statistics(
    ids: torch.Tensor, labels: torch.Tensor, n: int, vocab_size: int, num_classes: int, *, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Document frequencies of every n-gram of the given (training) reviews.

    ``ids (N, L)``, ``labels (N,)`` -> ``keys (F,)`` sorted int64 and ``df (F, C)`` int64: the number
    of reviews of each class holding the n-gram (at least once).
    """
    space = key_space(vocab_size, n)
    if space * max(chunk, num_classes) >= 2**62:
        raise ValueError(f"wide n-grams: {n}-grams of {vocab_size} ids do not fit int64 keys; use a smaller order")
    found_keys, found_classes = [], []
    labels = labels.long()
    for start in range(0, ids.shape[0], chunk):
        keys = ngram_keys(ids[start : start + chunk], n, vocab_size)
        rows, values = _unique_per_row(keys, space)
        found_keys.append(values)
        found_classes.append(labels[start : start + chunk][rows])
    if not found_keys:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, num_classes, dtype=torch.int64)
    packed, counts = torch.unique(torch.cat(found_keys) * num_classes + torch.cat(found_classes), return_counts=True)
    keys, where = torch.unique(packed // num_classes, return_inverse=True)
    df = torch.zeros(len(keys), num_classes, dtype=torch.int64)
    df.index_put_((where, packed % num_classes), counts, accumulate=True)
    return keys, df


def nb_ratio(df: torch.Tensor, alpha: float) -> torch.Tensor:
    """``df (F, C)`` document frequencies -> log-count ratios ``r (F, C)`` (module docstring), float64."""
    df = df.double()
    p = alpha + df
    q = alpha + (df.sum(1, keepdim=True) - df)
    return torch.log(p / p.sum(0)) - torch.log(q / q.sum(0))


class WideNgrams(nn.Module):
    """``ids (N, L) -> wide logits (N, C)`` (module docstring); empty until :meth:`fit`.

    Buffers ``keys (F,)`` (sorted n-gram keys) and ``ratio (F, C)``; parameter ``weight (F, C)``,
    initialised to ``init`` (0: the wide part starts silent; 1: it starts as the multinomial NB
    classifier's log-odds, up to the class prior). In training, ``dropout`` p drops each present
    n-gram with probability p and scales the others by 1 / (1 - p).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        ngrams: int,
        *,
        min_count: int = 1,
        alpha: float = 1.0,
        dropout: float = 0.0,
        init: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= ngrams <= MAX_ORDER:
            raise ValueError(f"wide_ngrams must be 1..{MAX_ORDER} (0: no wide part), got {ngrams}")
        if min_count < 1:
            raise ValueError(f"wide_min_count must be >= 1, got {min_count}")
        if not alpha > 0:
            raise ValueError(f"wide_alpha must be > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"wide_dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.num_classes, self.ngrams = int(vocab_size), int(num_classes), int(ngrams)
        self.min_count, self.alpha, self.dropout, self.init = int(min_count), float(alpha), float(dropout), float(init)
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("ratio", torch.zeros(0, num_classes))
        self.weight = nn.Parameter(torch.zeros(0, num_classes))

    @property
    def num_features(self) -> int:
        return int(self.keys.numel())

    def extra_repr(self) -> str:
        parts = [f"ngrams={self.ngrams}", f"features={self.num_features}", f"min_count={self.min_count}"]
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        return ", ".join(parts)

    @torch.no_grad()
    def fit(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        """Build the table from the **training** reviews ``ids (N, L)``, ``labels (N,)``; ``weight = init``."""
        keys, df = ngram_statistics(ids, labels, self.ngrams, self.vocab_size, self.num_classes)
        keep = df.sum(1) >= self.min_count
        keys, df = keys[keep], df[keep]
        device = self.weight.device
        self.keys = keys.to(device)
        self.ratio = nb_ratio(df, self.alpha).float().to(device)
        self.weight = nn.Parameter(torch.full((len(keys), self.num_classes), self.init, device=device))

    def resize_for_state(self, state: dict[str, Any], prefix: str) -> None:
        """Give the buffers and weight the shapes of ``state``'s (a checkpoint of a fitted model)."""
        device = self.weight.device
        name = f"{prefix}keys"
        if name in state and state[name].shape != self.keys.shape:
            f = state[name].shape[0]
            self.keys = torch.zeros(f, dtype=torch.int64, device=device)
            self.ratio = torch.zeros(f, self.num_classes, device=device)
            self.weight = nn.Parameter(torch.zeros(f, self.num_classes, device=device))

    def features(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows (M,), features (M,))``: review ``rows[i]`` holds table n-gram ``features[i]`` (once per review)."""
        f = self.num_features
        keys = ngram_keys(ids, self.ngrams, self.vocab_size)
        if f == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=ids.device)
            return empty, empty
        pos = torch.searchsorted(self.keys, keys.clamp_min(0)).clamp_max(f - 1)
        pos = torch.where((keys >= 0) & (self.keys[pos] == keys), pos, -1)
        return _unique_per_row(pos, f)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows, feats = self.features(ids)
        values = (self.weight * self.ratio).index_select(0, feats)  # (M, C)
        if self.training and self.dropout:
            keep = torch.rand(values.shape[0], 1, device=values.device) >= self.dropout
            values = values * keep / (1.0 - self.dropout)
        out = torch.zeros(ids.shape[0], self.num_classes, dtype=values.dtype, device=values.device)
        return out.index_add(0, rows, values)
