"""Shared helpers for the rnnlab.nn tests: configurations, runs with gradients, comparisons."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import rnnlab.nn as rnn

IMPLS = ("reference", "fused", "fast")
#: The impls plus "fast-py": impl="fast" on the Python fast path (RNNLAB_COMPILED=0), where
#: "fast" runs the compiled CPU loops (when they build), so that the grids cover both.
IMPL_CASES = (*IMPLS, "fast-py")


def use_impl_case(case: str, monkeypatch: Any) -> str:
    """The rnnlab impl of a test case (``IMPL_CASES``); "fast-py" also sets RNNLAB_COMPILED=0."""
    if case == "fast-py":
        monkeypatch.setenv("RNNLAB_COMPILED", "0")
        return "fast"
    return case


#: kind -> (class name, extra constructor keywords)
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 2}),
    "gru": ("GRU", {}),
}

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def make_pair(
    kind: str, input_size: int, hidden_size: int, dtype: torch.dtype, impl: str = "fused", **kwargs: Any
) -> tuple[nn.Module, nn.Module]:
    """A torch.nn module with fresh weights and an rnnlab copy of it."""
    name, extra = KINDS[kind]
    ref = getattr(nn, name)(input_size, hidden_size, **extra, **kwargs, dtype=dtype)
    ours = getattr(rnn, name).from_torch(ref, impl=impl)
    return ref, ours


def leaf(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_(True)


def run_with_grads(
    module: nn.Module, x: Tensor, state: Any, is_lstm: bool, seed: int = 123, **kwargs: Any
) -> dict[str, Tensor]:
    """Forward, then backward of a random linear function of every output.

    Returns output, h_n (and c_n), and the gradients of the input, initial states and every
    parameter under the keys ``d_input``, ``d_h0``, ``d_c0``, ``d_<parameter name>``.
    """
    x = leaf(x)
    if state is None:
        hx = None
        leaves = []
    elif is_lstm:
        hx = (leaf(state[0]), leaf(state[1]))
        leaves = list(hx)
    else:
        hx = leaf(state)
        leaves = [hx]
    out, hidden = module(x, hx, **kwargs)
    h_n, c_n = hidden if is_lstm else (hidden, None)
    results = {"output": out, "h_n": h_n}
    if c_n is not None:
        results["c_n"] = c_n
    gen = torch.Generator().manual_seed(seed)
    loss = sum((v * torch.randn(v.shape, generator=gen, dtype=v.dtype)).sum() for v in results.values())
    params = dict(module.named_parameters())
    inputs = [x, *leaves, *params.values()]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    names = ["d_input", *(["d_h0", "d_c0"] if is_lstm else ["d_h0"])[: len(leaves)], *("d_" + n for n in params)]
    for n, g in zip(names, grads):
        results[n] = g
    return {k: v.detach() if v is not None else None for k, v in results.items()}


def assert_same(expected: dict[str, Tensor], got: dict[str, Tensor], tol: float, where: str) -> None:
    assert expected.keys() == got.keys(), f"{where}: keys {sorted(expected)} != {sorted(got)}"
    for key, e in expected.items():
        g = got[key]
        if e is None or g is None:
            assert e is None and g is None, f"{where}: {key} is None in one result only"
            continue
        torch.testing.assert_close(g, e, atol=tol, rtol=tol, msg=lambda m: f"{where}: {key}: {m}")
