"""rnnlab.kernels: parity of the hand-written BPTT layers with torch.nn, and gradcheck, on both
CPU fast paths (the ``layer`` fixture of conftest.py: ``python`` and ``compiled``).

The reference runs torch.nn.RNN/LSTM/GRU (weights copied) on each sequence alone, on its first
``lengths[k]`` steps (flipped for the reverse direction), which is the contract of
``docs/ARCHITECTURE.md`` for padded batches.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnlab import kernels
from rnnlab.kernels import bptt

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _inputs(mode: str, dtype: torch.dtype, bias: bool, steps=7, batch=5, h_in=3, hid=4, seed=0, w_scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    g = GATES[mode]

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_(True)

    x = rand(steps, batch, h_in)
    h0 = rand(batch, hid)
    c0 = rand(batch, hid) if mode == "lstm" else None
    w_ih, w_hh = rand(g * hid, h_in, scale=w_scale), rand(g * hid, hid, scale=w_scale)
    b_ih = rand(g * hid) if bias else None
    b_hh = rand(g * hid) if bias else None
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh


def _torch_module(mode: str, h_in: int, hid: int, bias: bool, dtype: torch.dtype) -> torch.nn.RNNBase:
    if mode == "lstm":
        return torch.nn.LSTM(h_in, hid, bias=bias, dtype=dtype)
    if mode == "gru":
        return torch.nn.GRU(h_in, hid, bias=bias, dtype=dtype)
    return torch.nn.RNN(h_in, hid, nonlinearity=mode[4:], bias=bias, dtype=dtype)


def _reference(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse: bool, lengths: torch.Tensor | None):
    """torch.nn on each sequence alone: (out, h_n, c_n), differentiable w.r.t. all inputs."""
    steps, batch, h_in = x.shape
    hid = h0.shape[1]
    module = _torch_module(mode, h_in, hid, b_ih is not None, x.dtype)
    params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
    if b_ih is not None:
        params.update(bias_ih_l0=b_ih, bias_hh_l0=b_hh)
    lens = lengths.tolist() if lengths is not None else [steps] * batch
    outs, hs, cs = [], [], []
    for k in range(batch):
        xk = x[: lens[k], k : k + 1]  # (len_k, 1, H_in)
        if reverse:
            xk = xk.flip(0)
        hx = (h0[k : k + 1][None], c0[k : k + 1][None]) if mode == "lstm" else h0[k : k + 1][None]
        out, state = torch.func.functional_call(module, params, (xk, hx))
        if reverse:
            out = out.flip(0)
        outs.append(torch.cat((out, out.new_zeros(steps - lens[k], 1, hid))))
        if mode == "lstm":
            hs.append(state[0][0])
            cs.append(state[1][0])
        else:
            hs.append(state[0])
    return torch.cat(outs, 1), torch.cat(hs), torch.cat(cs) if cs else None


def _loss(out, h_n, c_n, weights):
    loss = (out * weights[0]).sum() + (h_n * weights[1]).sum()
    if c_n is not None:
        loss = loss + (c_n * weights[2]).sum()
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_parity_with_torch_nn(layer, mode: str, dtype: torch.dtype) -> None:
    """Output, h_n, c_n and the gradients of x, h0, c0 and every parameter, over
    reverse x lengths x bias, in training (autograd Function) and no-grad forms."""
    tol = TOL[dtype]
    unsorted = torch.tensor([7, 3, 7, 1, 5])  # unsorted, with ties, a length-1 and full-length rows
    desc = torch.tensor([7, 6, 4, 4, 2])  # already sorted: no permutation
    for reverse, lengths, bias in itertools.product((False, True), (None, unsorted, desc), (True, False)):
        inputs = _inputs(mode, dtype, bias)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
        leaves = [t for t in inputs if t is not None]
        out, h_n, c_n = layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, reverse, lengths)
        r_out, r_h, r_c = _reference(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, lengths)
        case = f"{mode} reverse={reverse} lengths={lengths is not None} bias={bias}"
        torch.testing.assert_close(out, r_out, atol=tol, rtol=tol, msg=lambda m: f"{case} out: {m}")
        torch.testing.assert_close(h_n, r_h, atol=tol, rtol=tol, msg=lambda m: f"{case} h_n: {m}")
        if mode == "lstm":
            torch.testing.assert_close(c_n, r_c, atol=tol, rtol=tol, msg=lambda m: f"{case} c_n: {m}")
        else:
            assert c_n is None
        gen = torch.Generator().manual_seed(1)
        weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype) for t in (out, h_n, h_n)]
        grads = torch.autograd.grad(_loss(out, h_n, c_n, weights), leaves)
        r_grads = torch.autograd.grad(_loss(r_out, r_h, r_c, weights), leaves)
        for t, g, rg in zip(range(len(leaves)), grads, r_grads):
            torch.testing.assert_close(g, rg, atol=tol, rtol=tol, msg=lambda m: f"{case} grad of input {t}: {m}")
        with torch.no_grad():  # the inference loop (saves nothing) gives the same numbers
            n_out, n_h, n_c = layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, reverse, lengths)
        torch.testing.assert_close(n_out, r_out, atol=tol, rtol=tol)
        torch.testing.assert_close(n_h, r_h, atol=tol, rtol=tol)
        if mode == "lstm":
            torch.testing.assert_close(n_c, r_c, atol=tol, rtol=tol)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(layer, mode: str) -> None:
    """The hand-written backward against finite differences, with and without lengths."""
    for reverse, lengths in ((False, None), (True, torch.tensor([2, 4, 1]))):
        inputs = _inputs(mode, torch.float64, bias=True, steps=4, batch=3, h_in=2, hid=3, seed=2)

        def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
            out, h_n, c_n = layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, reverse, lengths)
            return (out, h_n) if c_n is None else (out, h_n, c_n)

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_only_needed_gradients_and_frozen_weights(layer) -> None:
    """Inputs that do not require grad get none; the others still match torch.nn."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs("lstm", torch.float64, bias=True)
    x = x.detach()
    h0, c0 = h0.detach(), c0.detach()
    out, h_n, c_n = layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, None)
    r_out, r_h, r_c = _reference("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, False, None)
    g = torch.autograd.grad(out.sum() + c_n.sum(), (w_ih, w_hh, b_ih, b_hh))
    rg = torch.autograd.grad(r_out.sum() + r_c.sum(), (w_ih, w_hh, b_ih, b_hh))
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert x.grad is None and h0.grad is None


def test_layer_function_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU: the compiled path when it can be had, the Python path with RNNLAB_COMPILED=0."""
    from rnnlab.kernels import compiled, native

    fn = kernels.layer_function(
        "gru", torch.device("cpu"), torch.float32, has_lengths=True, has_proj=False, training=True
    )
    assert fn is (native.layer if compiled.ops() is not None else bptt.layer)
    monkeypatch.setenv("RNNLAB_COMPILED", "0")
    fn = kernels.layer_function(
        "lstm", torch.device("cpu"), torch.float64, has_lengths=False, has_proj=False, training=False
    )
    assert fn is bptt.layer
    assert (
        kernels.layer_function(
            "lstm", torch.device("cpu"), torch.float32, has_lengths=False, has_proj=True, training=False
        )
        is None
    )
    assert (
        kernels.layer_function(
            "rnn_tanh", torch.device("cpu"), torch.bfloat16, has_lengths=False, has_proj=False, training=False
        )
        is None
    )
    with pytest.raises(ValueError, match="mode must be one of .* got 'lstmx'"):
        kernels.layer_function(
            "lstmx", torch.device("cpu"), torch.float32, has_lengths=False, has_proj=False, training=False
        )


def test_bad_lengths_and_projection_rejected(layer) -> None:
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs("lstm", torch.float32, bias=True)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 7\], got min 0 and max 7"):
        layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, torch.tensor([7, 0, 7, 1, 5]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 7\], got min 1 and max 8"):
        layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, torch.tensor([8, 3, 7, 1, 5]))
    with pytest.raises(NotImplementedError, match="proj_size > 0"):
        layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, torch.zeros(3, 4), False, None)


def test_padded_steps_do_not_leak(layer) -> None:
    """Values and gradients at padded steps do not reach the results (they are never read)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs("gru", torch.float64, bias=True)
    lengths = torch.tensor([7, 3, 7, 1, 5])
    out, h_n, _ = layer("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, True, lengths)
    x2 = x.detach().clone()
    x2[5:, 1] = 1e6  # garbage in the padding of sequence 1 (length 3)
    out2, h_n2, _ = layer("gru", x2, h0, None, w_ih, w_hh, b_ih, b_hh, None, True, lengths)
    torch.testing.assert_close(out2, out, atol=0, rtol=0)
    torch.testing.assert_close(h_n2, h_n, atol=0, rtol=0)
    assert torch.count_nonzero(out[3:, 1]) == 0
    (gx,) = torch.autograd.grad(out.sum() + h_n.sum(), x)
    assert torch.count_nonzero(gx[3:, 1]) == 0 and torch.count_nonzero(gx[1:, 3]) == 0


def test_retain_graph_backward_twice_and_threads_restored(layer) -> None:
    """Saved buffers are not modified by backward; the one-thread time loop restores threads."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs("lstm", torch.float64, bias=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out, h_n, c_n = layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, True, torch.tensor([7, 3, 7, 1, 5]))
        loss = out.pow(2).sum() + c_n.sum()
        first = torch.autograd.grad(loss, (x, w_hh), retain_graph=True)
        second = torch.autograd.grad(loss, (x, w_hh))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_layer_function_asks_the_gpu_dispatch_first_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA: the GPU package's answer wins; where it has none, the BPTT path answers (no GPU needed)."""
    import rnnlab.kernels.triton as gpu

    sentinel = object()
    monkeypatch.setattr(gpu, "cuda_layer_function", lambda *a, **k: sentinel)
    cuda = torch.device("cuda")
    assert (
        kernels.layer_function("lstm", cuda, torch.float32, has_lengths=False, has_proj=False, training=True)
        is sentinel
    )
    monkeypatch.setattr(gpu, "cuda_layer_function", lambda *a, **k: None)
    assert (
        kernels.layer_function("gru", cuda, torch.float64, has_lengths=True, has_proj=False, training=False)
        is bptt.layer
    )
    assert kernels.layer_function("lstm", cuda, torch.float32, has_lengths=False, has_proj=True, training=False) is None


@pytest.mark.parametrize("mode", MODES)
def test_chunked_inference_projection(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No grad, Python path: input projections computed a few steps at a time (chunks of 3 over
    7 steps, both directions, with lengths) give torch.nn's numbers (the compiled path's chunks:
    test_compiled.py)."""
    layer = bptt.layer
    monkeypatch.setattr(bptt, "INFERENCE_CHUNK", 3)
    for reverse, lengths in itertools.product((False, True), (None, torch.tensor([7, 3, 7, 1, 5]))):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs(mode, torch.float64, bias=True, seed=3)
        with torch.no_grad():
            out, h_n, c_n = layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, reverse, lengths)
            r_out, r_h, r_c = _reference(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, lengths)
        torch.testing.assert_close(out, r_out, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(h_n, r_h, atol=1e-10, rtol=1e-10)
        if mode == "lstm":
            torch.testing.assert_close(c_n, r_c, atol=1e-10, rtol=1e-10)
