"""The wide part (NB-weighted n-gram indicators, rnnlab.models.wide) and the wide-and-deep classifier."""

from __future__ import annotations

import math

import pytest
import torch

from rnnlab.models import RNNClassifier
from rnnlab.models.wide import WideNgrams, nb_ratio, ngram_keys, ngram_statistics

V = 10  # ids 0 padding, 1 <unk>, 2..9 words


def _ids(rows):
    width = max(map(len, rows))
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def test_ngram_keys_pinned():
    keys = ngram_keys(_ids([[2, 3, 4, 0], [5, 1, 6, 7]]), 3, V)
    # unigrams (4 positions), bigrams (offset V = 10), trigrams (offset V + V^2 = 110); -1 holds padding/<unk>
    assert keys.tolist() == [
        [2, 3, 4, -1, 10 + 23, 10 + 34, -1, 110 + 234, -1],
        [5, -1, 6, 7, -1, -1, 10 + 67, -1, -1],
    ]
    assert ngram_keys(_ids([[2, 3]]), 1, V).tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="the order must be 1..3, got 4"):
        ngram_keys(_ids([[2]]), 4, V)


def test_document_frequencies_are_binary_and_per_class():
    ids = _ids([[2, 2, 2, 3], [2, 3], [4]])
    keys, df = ngram_statistics(ids, torch.tensor([1, 0, 1]), 2, V, 2, chunk=2)
    table = dict(zip(keys.tolist(), df.tolist()))
    # "2" three times in review 0 counts once; bigram (2, 2) = 10 + 22, (2, 3) = 10 + 23
    assert table == {2: [1, 1], 3: [1, 1], 4: [0, 1], 32: [0, 1], 33: [1, 1]}
    assert keys.tolist() == sorted(keys.tolist())


def test_nb_ratio_pinned():
    r = nb_ratio(torch.tensor([[1, 0], [0, 2]]), alpha=1.0)
    # class 1: p = alpha + df_1 = (1, 3); rest (class 0): q = (2, 1)
    expected = [math.log((1 / 4) / (2 / 3)), math.log((3 / 4) / (1 / 3))]
    assert r[:, 1].tolist() == pytest.approx(expected)
    assert r[:, 0].tolist() == pytest.approx([-x for x in expected])


def _dense_reference(rows, wide: WideNgrams) -> torch.Tensor:
    """sum_f x_f r_f W_f with x the binary indicators, from Python loops over the token lists."""
    index = {k: i for i, k in enumerate(wide.keys.tolist())}
    x = torch.zeros(len(rows), wide.num_features, dtype=torch.float64)
    for n, toks in enumerate(rows):
        for k in range(1, wide.ngrams + 1):
            for s in range(len(toks) - k + 1):
                gram = toks[s : s + k]
                if min(gram) < 2:
                    continue
                key = sum(V**i for i in range(1, k)) + sum(w * V ** (k - 1 - j) for j, w in enumerate(gram))
                if key in index:
                    x[n, index[key]] = 1.0
    return x @ (wide.ratio.double() * wide.weight.double())


def test_wide_logits_equal_a_dense_reference():
    g = torch.Generator().manual_seed(0)
    train = [
        torch.randint(1, V, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(40)
    ]
    labels = torch.tensor([i % 2 for i in range(40)])
    wide = WideNgrams(V, 2, 3, min_count=2)
    wide.fit(_ids(train), labels)
    with torch.no_grad():
        wide.weight.normal_(generator=g)
    test = [torch.randint(1, V, (9,), generator=g).tolist() for _ in range(7)] + [[9, 9, 9, 9]]
    wide.eval()
    out = wide(_ids(test))
    assert out.shape == (8, 2)
    assert torch.allclose(out.double(), _dense_reference(test, wide), atol=1e-5)
    assert wide.num_features > 0 and wide.keys.tolist() == sorted(wide.keys.tolist())


def test_table_holds_only_training_ngrams_with_min_count():
    train = _ids([[2, 3, 4], [2, 3, 5], [6, 7]])
    wide = WideNgrams(V, 2, 2, min_count=2)
    wide.fit(train, torch.tensor([1, 0, 1]))
    assert wide.keys.tolist() == [2, 3, 10 + 23]  # in >= 2 training reviews
    wide_all = WideNgrams(V, 2, 2, min_count=1, init=1.0)
    wide_all.fit(train, torch.tensor([1, 0, 1]))
    assert torch.equal(wide_all.weight, torch.ones(6 + 4, 2))  # 6 words, 4 distinct bigrams
    # a review of n-grams never seen in training (8, 9, (8, 9)) gets nothing from the wide part
    rows, feats = wide_all.features(_ids([[8, 9], [2, 8]]))
    assert rows.tolist() == [1] and wide_all.keys[feats].tolist() == [2]
    assert wide_all(_ids([[8, 9]])).tolist() == [[0.0, 0.0]]


def test_wide_dropout_only_in_training():
    wide = WideNgrams(V, 2, 1, dropout=0.5, init=1.0)
    wide.fit(_ids([[2, 3, 4, 5, 6, 7, 8, 9]] * 2), torch.tensor([0, 1]))
    with torch.no_grad():
        wide.ratio.fill_(1.0)
    ids = _ids([[2, 3, 4, 5, 6, 7, 8, 9]])
    wide.eval()
    assert wide(ids).tolist() == [[8.0, 8.0]]
    wide.train()
    torch.manual_seed(0)
    kept = wide(ids)[0, 0].item()
    assert kept != 8.0 and kept % 2.0 == 0.0  # kept n-grams scaled by 1 / (1 - p) = 2


def test_classifier_output_is_deep_plus_wide():
    torch.manual_seed(0)
    deep = RNNClassifier(V, 2, embedding_dim=4, hidden_size=4, pooling="mean")
    torch.manual_seed(0)
    both = RNNClassifier(V, 2, embedding_dim=4, hidden_size=4, pooling="mean", wide={"ngrams": 2})
    ids = _ids([[2, 3, 4, 5], [6, 7, 2, 0]])
    lengths = torch.tensor([4, 3])
    both.fit_wide(type("Split", (), {"ids": ids, "labels": torch.tensor([0, 1])})())
    with torch.no_grad():
        both.wide.weight.normal_()
    deep.eval(), both.eval()
    assert torch.allclose(both(ids, lengths), deep(ids, lengths) + both.wide(ids), atol=1e-6)
    assert both.deep_logits is None  # kept only in training
    both.train()
    both(ids, lengths)
    assert both.deep_logits.shape == (2, 2)


def test_resize_for_state_loads_a_fitted_checkpoint():
    fitted = RNNClassifier(V, 2, embedding_dim=4, hidden_size=4, wide={"ngrams": 3})
    fitted.fit_wide(type("Split", (), {"ids": _ids([[2, 3, 4, 5]]), "labels": torch.tensor([1])})())
    fresh = RNNClassifier(V, 2, embedding_dim=4, hidden_size=4, wide={"ngrams": 3})
    state = fitted.state_dict()
    fresh.resize_for_state(state)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.wide.keys, fitted.wide.keys) and fresh.wide.num_features == 4 + 3 + 2
