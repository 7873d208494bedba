r"""Integrated Gradients on the embedding layer (Sundararajan, Taly & Yan 2017), with Captum.

``F`` is the log-odds of the target class k, ``F = z_k - log sum_{j != k} exp(z_j)`` for the
model's outputs ``z`` (logits, or log-probabilities for ``loss = "nll"`` runs: the log-odds are
the same), i.e. ``log(p_k / (1 - p_k))``; with two classes, ``z_k - z_other``. Not the logit
``z_k`` alone: a softmax's logits share a free offset, and measured on an RNN run, the all-padding
baseline had a higher "pos" logit (0.57) than a review the model called pos (0.30), so every word
of that review came out "against" pos. For an input's embeddings ``x`` (L, E) and the baseline
``x'``, the embeddings of an all-padding sequence of the same length, token t gets

.. math::

    a_t = \sum_e (x_{te} - x'_{te}) \int_0^1
          \frac{\partial F(x' + \alpha (x - x'))}{\partial x_{te}} \, d\alpha

computed with ``steps`` Gauss-Legendre points. Completeness: ``sum_t a_t = F(x) - F(x')`` up
to the quadrature error, reported as ``delta = sum_t a_t - (F(x) - F(x'))``.

Captum's ``LayerIntegratedGradients`` cannot be used on ``model.embedding`` here: it takes dim
0 of a layer's output as the batch, and the classifier embeds time-major ``(L, N, E)``
(measured: ``RuntimeError: shape '[1, 1, 1]' is invalid for input of size 20`` on a 7-token
input). So this module runs Captum's ``IntegratedGradients`` on the embedding outputs
themselves, batch-first, put into the model by a forward hook on the embedding layer(s): the
same integral as layer IG on the embedding layer. With ``bigram_buckets > 0`` the hashed
bigram embedding is a second input (baseline: its padding row, zero) and a token's
attribution is the sum over both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients
from torch import Tensor, nn

from rnnlab.models import RNNClassifier, bigram_ids

__all__ = ["Attribution", "integrated_gradients", "log_odds"]


@dataclass
class Attribution:
    """Per-example results: ``tokens`` (N, L) attributions (0 at padding), ``delta`` (N,),
    ``output`` / ``baseline_output`` (N,): the log-odds ``F`` at the input and at the baseline,
    ``target`` (N,)."""

    tokens: Tensor
    delta: Tensor
    output: Tensor
    baseline_output: Tensor
    target: Tensor
    steps: int


def _embedding_layers(model: RNNClassifier) -> list[nn.Embedding]:
    layers = [model.embedding]
    if model.bigram_buckets:
        layers.append(model.bigram_embedding)
    return layers


def _embed(model: RNNClassifier, ids: Tensor) -> tuple[Tensor, ...]:
    """Batch-first embeddings ``(N, L, E)`` of ``ids`` (N, L), one per embedding layer."""
    out = [model.embedding(ids)]
    if model.bigram_buckets:
        out.append(model.bigram_embedding(bigram_ids(ids, model.bigram_buckets)))
    return tuple(out)


def log_odds(z: Tensor) -> Tensor:
    """``(N, C)`` outputs -> ``(N, C)`` log-odds: ``z_c - logsumexp_{j != c} z_j``."""
    c = z.shape[1]
    others = z.unsqueeze(1).expand(-1, c, c).masked_fill(torch.eye(c, dtype=torch.bool, device=z.device), float("-inf"))
    return z - others.logsumexp(-1)


def _forward_from_embeddings(model: RNNClassifier) -> Callable[..., Tensor]:
    """``f(*embeddings, ids, lengths) -> log-odds (N, C)`` with the embedding layers' outputs
    replaced by the given batch-first embeddings (transposed to the model's (L, N, E))."""
    layers = _embedding_layers(model)

    def forward(*args: Tensor) -> Tensor:
        embeddings, (ids, lengths) = args[:-2], args[-2:]
        handles = [
            layer.register_forward_hook(lambda _m, _i, _o, e=e: e.transpose(0, 1))
            for layer, e in zip(layers, embeddings)
        ]
        try:
            return log_odds(model(ids, lengths))
        finally:
            for h in handles:
                h.remove()

    return forward


def integrated_gradients(
    model: RNNClassifier, ids: Tensor, lengths: Tensor, target: Tensor | None = None, *, steps: int = 64
) -> Attribution:
    """Integrated Gradients of the log-odds of ``target`` (default: the predicted class).

    ids (N, L) right-padded with 0, lengths (N,); the baseline of example n is ``lengths[n]``
    padding tokens. The model must be in eval mode (dropout would make F random).
    """
    if model.training:
        raise ValueError("integrated_gradients: put the model in eval mode first (model.eval())")
    if steps < 2:
        raise ValueError(f"integrated_gradients: steps must be >= 2, got {steps}")
    baseline_ids = torch.zeros_like(ids)
    with torch.no_grad():
        out = log_odds(model(ids, lengths))
        base = log_odds(model(baseline_ids, lengths))
        if target is None:
            target = out.argmax(-1)
        inputs = _embed(model, ids)
        baselines = _embed(model, baseline_ids)
    ig = IntegratedGradients(_forward_from_embeddings(model))
    attr, delta = ig.attribute(
        inputs,
        baselines=baselines,
        target=target,
        additional_forward_args=(ids, lengths),
        n_steps=steps,
        method="gausslegendre",
        internal_batch_size=max(steps, 1) * ids.shape[0],
        return_convergence_delta=True,
    )
    tokens = sum(a.sum(-1) for a in attr).detach()  # (N, L)
    pick = target.view(-1, 1)
    return Attribution(
        tokens=tokens,
        delta=delta.detach(),
        output=out.gather(1, pick).squeeze(1),
        baseline_output=base.gather(1, pick).squeeze(1),
        target=target,
        steps=steps,
    )
