"""The NBSVM baseline: exact features, the NB log-count ratio, accuracy on separable data, its run dir."""

from __future__ import annotations

import math

import numpy as np
import pytest
from experiments_helpers import tiny_texts

from rnnlab.experiments.baseline import _nb_ratio, featurize, nbsvm, write_baseline_run
from rnnlab.report.runs import read_run


def test_featurize_uni_and_bigrams_binary():
    x_train, x_test = featurize([["a", "b", "a", "b"], ["b", "c"]], [["a", "d", "c", "a"], []])
    assert x_train.shape == (2, 6)  # a, b, c, "a b", "b a", "b c"
    assert x_train.toarray().tolist() == [[1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 1]]  # binary: "a b" twice -> 1
    assert x_test.toarray().tolist() == [[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]  # unseen "d", "a d", "d c" dropped
    x1, _ = featurize([["a", "b"]], [["b"]], ngram=1)
    assert x1.shape == (1, 2)
    with pytest.raises(ValueError, match="ngram must be 1 .* or 2 .*, got 3"):
        featurize([["a"]], [["a"]], ngram=3)


def test_nb_log_count_ratio():
    from scipy import sparse

    x = sparse.csr_matrix(np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32))
    r = _nb_ratio(x, np.array([1, 1, 0]), alpha=1.0)
    p, q = np.array([3.0, 2.0]), np.array([1.0, 2.0])  # alpha + counts per class
    assert r == pytest.approx(np.log(p / 5) - np.log(q / 3))


def test_nbsvm_learns_sentiment_words_and_three_classes():
    tr, te = tiny_texts(200, 1), tiny_texts(80, 2)
    res = nbsvm(tr[0], tr[1], te[0], te[1], tokenize=str.split)
    assert res.test_acc == 1.0 and res.test_loss < 0.3
    # three classes: one-vs-rest; class 2 has its own word
    texts = [t + " meh" if i % 3 == 2 else t for i, t in enumerate(tr[0])]
    labels = [2 if i % 3 == 2 else y for i, y in enumerate(tr[1])]
    res3 = nbsvm(texts, labels, texts, labels, tokenize=str.split)
    assert res3.train_acc == 1.0 and math.isfinite(res3.train_loss)
    with pytest.raises(ValueError, match=r"at least two classes in training, got \[1\]"):
        nbsvm(["a", "b"], [1, 1], ["a"], [1], tokenize=str.split)


def test_baseline_run_dir_reads_as_a_complete_baseline(tmp_path):
    tr, te = tiny_texts(100, 1), tiny_texts(40, 2)
    res = nbsvm(tr[0], tr[1], te[0], te[1], tokenize=str.split)
    run = read_run(write_baseline_run(res, tmp_path / "b", num_train=100, num_test=40))
    assert run.complete and run.kind == "baseline" and run.name == "nbsvm_bigram"
    assert run.rows[0]["test_acc"] == res.test_acc and run.num_params == res.num_features + 1
