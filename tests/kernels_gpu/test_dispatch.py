"""cuda_layer_function's answers, the CUDA-graph path's CPU fallback, and a full rnnlab.nn stack on the kernels."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "triton", reason="triton is not installed (pip install 'rnnlab[gpu]'): the Triton kernels are not tested"
)

import rnnlab.kernels  # noqa: E402
import rnnlab.nn as rnn  # noqa: E402
from rnnlab.kernels import cuda_graphs  # noqa: E402
from rnnlab.kernels.triton import cuda_layer_function  # noqa: E402
from rnnlab.kernels.triton.layer import triton_layer  # noqa: E402
from rnnlab.nn import functional  # noqa: E402

CUDA = torch.device("cuda")
KW = dict(has_lengths=True, has_proj=False, training=True)


def test_cuda_layer_function_answers(monkeypatch):
    monkeypatch.delenv("RNNLAB_GPU_KERNEL", raising=False)
    for mode in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        assert cuda_layer_function(mode, CUDA, torch.float32, **KW) is triton_layer
    assert cuda_layer_function("lstm", CUDA, torch.bfloat16, **KW) is triton_layer
    assert cuda_layer_function("lstm", torch.device("cpu"), torch.float32, **KW) is None
    assert cuda_layer_function("lstm", CUDA, torch.float64, **KW) is None
    assert cuda_layer_function("lstm", CUDA, torch.float32, has_lengths=False, has_proj=True, training=False) is None
    monkeypatch.setenv("RNNLAB_GPU_KERNEL", "none")
    assert cuda_layer_function("lstm", CUDA, torch.float32, **KW) is None
    monkeypatch.setenv("RNNLAB_GPU_KERNEL", "graphs")
    expected = cuda_graphs.graphed_layer if torch.cuda.is_available() else None
    assert cuda_layer_function("gru", CUDA, torch.float32, **KW) is expected


def test_cuda_layer_function_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"mode must be one of .* got 'lstmm'"):
        cuda_layer_function("lstmm", CUDA, torch.float32, **KW)
    monkeypatch.setenv("RNNLAB_GPU_KERNEL", "cudnn")
    with pytest.raises(ValueError, match="RNNLAB_GPU_KERNEL must be one of triton, graphs, none, got 'cudnn'"):
        cuda_layer_function("lstm", CUDA, torch.float32, **KW)


def test_graphed_layer_falls_back_to_the_fused_form_off_cuda():
    """Off CUDA nothing is captured or cached; the result is the fused form's, gradients included."""
    torch.manual_seed(0)
    cuda_graphs.clear_cache()
    x = torch.randn(4, 2, 3, requires_grad=True)
    h0, c0 = torch.randn(2, 5), torch.randn(2, 5)
    w_ih, w_hh = torch.randn(20, 3, requires_grad=True), torch.randn(20, 5, requires_grad=True)
    lengths = torch.tensor([4, 2])
    got = cuda_graphs.graphed_layer("lstm", x, h0, c0, w_ih, w_hh, None, None, None, True, lengths)
    want = functional.fused_layer("lstm", x, h0, c0, w_ih, w_hh, None, None, None, True, lengths)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert cuda_graphs._cache == {}
    ga = torch.autograd.grad(got[0].sum() + got[2].sum(), [x, w_hh])
    gb = torch.autograd.grad(want[0].sum() + want[2].sum(), [x, w_hh])
    assert all(torch.equal(a, b) for a, b in zip(ga, gb))


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_rnnlab_stack_on_triton_kernels_matches_torch(cls, device, monkeypatch):
    """rnnlab.nn (2 layers, bidirectional, batch_first, lengths) with every layer on the Triton
    kernels, as the dispatch will route CUDA calls: torch.nn's outputs, states and gradients."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[-2])  # reverse
        return triton_layer(*args, **kwargs)

    monkeypatch.setattr(rnnlab.kernels, "layer_function", lambda mode, *a, **k: counted)
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(3, 4, num_layers=2, bidirectional=True, batch_first=True).to(device)
    ours = getattr(rnn, cls)(3, 4, num_layers=2, bidirectional=True, batch_first=True, impl="fast").to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 3, device=device)
    lengths = torch.tensor([5, 2, 4])
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x_ref, lengths, batch_first=True, enforce_sorted=False)
    ref_packed, ref_state = ref(packed)
    ref_out, _ = torch.nn.utils.rnn.pad_packed_sequence(ref_packed, batch_first=True, total_length=5)
    out, state = ours(x_ours, lengths=lengths)
    ref_h = ref_state[0] if cls == "LSTM" else ref_state
    h = state[0] if cls == "LSTM" else state
    tol = dict(atol=2e-5, rtol=1e-4)
    assert calls == [False, True, False, True]  # every layer and direction ran on the kernels
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(h, ref_h, **tol)
    if cls == "LSTM":
        torch.testing.assert_close(state[1], ref_state[1], **tol)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref_out * w).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **tol)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **tol, msg=lambda m, name=name: f"{name}: {m}")
