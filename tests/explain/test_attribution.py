"""Integrated Gradients: completeness, agreement with a hand-written integral, padding, log-odds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnlab.explain.attribution import integrated_gradients, log_odds
from rnnlab.models import RNNClassifier


def _model(cell: str, **kwargs) -> RNNClassifier:
    torch.manual_seed(0)
    return RNNClassifier(40, 2, cell=cell, embedding_dim=6, hidden_size=5, **kwargs).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(2, 40, (3, 8))
    lengths = torch.tensor([8, 3, 5])
    for k, n in enumerate(lengths):
        ids[k, n:] = 0
    return ids, lengths


CASES = [
    ("rnn", {}),
    ("lstm", {}),
    ("gru", {"pooling": "mean"}),
    ("lstm", {"bidirectional": True, "num_layers": 2, "pooling": "meanmax"}),
    ("gru", {"bigram_buckets": 11}),
    ("lstm", {"encoder": "torch"}),
    ("rnn", {"log_softmax": True}),
]


@pytest.mark.parametrize(("cell", "kwargs"), CASES)
def test_attributions_sum_to_the_output_difference_within_delta(cell, kwargs):
    model = _model(cell, **kwargs)
    ids, lengths = _batch()
    a = integrated_gradients(model, ids, lengths, steps=64)
    with torch.no_grad():  # F(x) - F(baseline), computed here from the model itself
        z, z0 = log_odds(model(ids, lengths)), log_odds(model(torch.zeros_like(ids), lengths))
    k = z.argmax(1, keepdim=True)
    diff = (z.gather(1, k) - z0.gather(1, k)).squeeze(1)
    total = a.tokens.sum(1)
    torch.testing.assert_close(a.delta, total - diff, rtol=0, atol=1e-5)  # the reported delta is the real gap
    assert (total - diff).abs().max() <= a.delta.abs().max() + 1e-5
    assert bool((a.delta.abs() <= 0.15 * diff.abs() + 1e-5).all())  # the head's ReLU kinks slow convergence
    assert a.target.tolist() == k.squeeze(1).tolist()
    assert float(a.tokens[1, 3:].abs().max()) == 0.0 and float(a.tokens[2, 5:].abs().max()) == 0.0  # padding


def test_delta_shrinks_with_more_steps():
    model = _model("lstm").double()
    ids, lengths = _batch()
    deltas = [float(integrated_gradients(model, ids, lengths, steps=s).delta.abs().max()) for s in (8, 64, 512)]
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[2] < 0.002


def test_matches_a_hand_written_gauss_legendre_integral():
    model = _model("lstm")
    ids, lengths = _batch()
    steps = 16
    a = integrated_gradients(model, ids, lengths, steps=steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2  # on [0, 1]
    x = model.embedding(ids).detach()  # (N, L, E)
    x0 = model.embedding(torch.zeros_like(ids)).detach()
    total = torch.zeros_like(x)
    for alpha, w in zip(alphas, weights):
        point = (x0 + float(alpha) * (x - x0)).requires_grad_(True)
        handle = model.embedding.register_forward_hook(lambda _m, _i, _o: point.transpose(0, 1))
        try:
            out = log_odds(model(ids, lengths)).gather(1, a.target[:, None]).sum()
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(out, point)
        total += float(w) * grad
    expected = ((x - x0) * total).sum(-1)
    torch.testing.assert_close(a.tokens, expected, rtol=1e-4, atol=1e-6)


def test_log_odds_of_two_classes_is_the_logit_difference():
    z = torch.tensor([[1.0, -0.5], [0.2, 0.3]])
    torch.testing.assert_close(log_odds(z), torch.tensor([[1.5, -1.5], [-0.1, 0.1]]))
    z3 = torch.tensor([[0.0, 1.0, 2.0]])
    p = z3.softmax(-1)
    torch.testing.assert_close(log_odds(z3), (p / (1 - p)).log())
    torch.testing.assert_close(log_odds(z3.log_softmax(-1)), log_odds(z3))  # nll runs: same log-odds


def test_refuses_training_mode_and_too_few_steps():
    model = _model("gru")
    ids, lengths = _batch()
    with pytest.raises(ValueError, match="steps must be >= 2, got 1"):
        integrated_gradients(model, ids, lengths, steps=1)
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        integrated_gradients(model, ids, lengths)
