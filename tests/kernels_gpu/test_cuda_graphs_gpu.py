"""The CUDA-graph path on a real GPU (skipped without one): parity with the uncaptured fused
form in training and inference, replays with new values, and the cache."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (CUDA-graph capture cannot run on the CPU)", allow_module_level=True)

from rnnlab.kernels import cuda_graphs  # noqa: E402
from rnnlab.nn import functional  # noqa: E402


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_graphed_layer_matches_fused_form(mode, with_lengths):
    torch.manual_seed(0)
    cuda_graphs.clear_cache()
    dev = torch.device("cuda")
    gates = 4 if mode == "lstm" else 3
    steps, batch, h_in, hidden = 7, 5, 6, 8
    w = [
        torch.randn(gates * hidden, h_in, device=dev, requires_grad=True),
        torch.randn(gates * hidden, hidden, device=dev, requires_grad=True),
        torch.randn(gates * hidden, device=dev, requires_grad=True),
        torch.randn(gates * hidden, device=dev, requires_grad=True),
    ]
    for trial in range(3):  # the first call captures, the next ones replay with new values
        x = torch.randn(steps, batch, h_in, device=dev, requires_grad=True)
        h0 = torch.randn(batch, hidden, device=dev)
        c0 = torch.randn(batch, hidden, device=dev) if mode == "lstm" else None
        lengths = torch.randint(1, steps + 1, (batch,)) if with_lengths else None
        got = cuda_graphs.graphed_layer(mode, x, h0, c0, *w, None, trial % 2 == 1, lengths)
        want = functional.fused_layer(mode, x, h0, c0, *w, None, trial % 2 == 1, lengths)
        for a, b in zip(got, want):
            if b is not None:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        ga = torch.autograd.grad(got[0].square().sum() + got[1].sum(), [x, *w])
        gb = torch.autograd.grad(want[0].square().sum() + want[1].sum(), [x, *w])
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            inf = cuda_graphs.graphed_layer(mode, x, h0, c0, *w, None, trial % 2 == 1, lengths)
        torch.testing.assert_close(inf[0], want[0].detach(), atol=1e-5, rtol=1e-5)
    assert 2 <= len(cuda_graphs._cache) <= 4  # (training, inference) x (forward, reverse) keys
    assert all(v is not cuda_graphs._FAILED for v in cuda_graphs._cache.values())
