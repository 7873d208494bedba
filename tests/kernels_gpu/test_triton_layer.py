"""Parity of the persistent Triton kernels with torch.nn (outputs, states, every gradient).

Under ``TRITON_INTERPRET=1`` (see conftest.py) the kernels run on CPU tensors, tiny shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

pytest.importorskip(
    "triton", reason="triton is not installed (pip install 'rnnlab[gpu]'): the Triton kernels are not tested"
)

from rnnlab.kernels.triton import layer as tl_layer  # noqa: E402
from rnnlab.kernels.triton.layer import triton_layer  # noqa: E402
from rnnlab.nn import functional  # noqa: E402

TORCH = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}
F32 = dict(atol=2e-5, rtol=1e-4)


def _torch_module(
    mode: str, h_in: int, hidden: int, bias: bool, device: torch.device, seed: int = 0
) -> torch.nn.Module:
    torch.manual_seed(seed)
    name, kwargs = TORCH[mode]
    return getattr(torch.nn, name)(h_in, hidden, bias=bias, bidirectional=True, **kwargs).to(device)


def _weights(m: torch.nn.Module, reverse: bool) -> list:
    sfx = "_reverse" if reverse else ""
    return [getattr(m, f"{n}_l0{sfx}", None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def _both_directions(mode, m, x, h0, c0, lengths, fn=triton_layer):
    """Run ``fn`` for both directions of a one-layer bidirectional module: (out (L, N, 2H), h_n (2, N, H), c_n)."""
    res = [
        fn(mode, x, h0[d], None if c0 is None else c0[d], *_weights(m, d == 1), None, d == 1, lengths) for d in (0, 1)
    ]
    out = torch.cat([r[0] for r in res], 2)
    h_n = torch.stack([r[1] for r in res])
    c_n = torch.stack([r[2] for r in res]) if c0 is not None else None
    return out, h_n, c_n


def _inputs(mode, steps, batch, h_in, hidden, device, dtype=torch.float32):
    torch.manual_seed(1)
    x = torch.randn(steps, batch, h_in, device=device, dtype=dtype, requires_grad=True)
    h0 = (0.5 * torch.randn(2, batch, hidden, device=device, dtype=dtype)).requires_grad_()
    c0 = (0.5 * torch.randn(2, batch, hidden, device=device, dtype=dtype)).requires_grad_() if mode == "lstm" else None
    return x, h0, c0


def _loss(out, h_n, c_n, seed=2):
    """A loss that weights every output, h_n and c_n entry differently (random upstream gradients)."""
    g = torch.Generator().manual_seed(seed)
    total = (out * torch.randn(out.shape, generator=g).to(out)).sum() + (
        h_n * torch.randn(h_n.shape, generator=g).to(h_n)
    ).sum()
    if c_n is not None:
        total = total + (c_n * torch.randn(c_n.shape, generator=g).to(c_n)).sum()
    return total


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("hidden", [4, 16])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_parity_with_torch_both_directions(mode, hidden, device):
    steps, batch, h_in = 5, 3, 6
    m = _torch_module(mode, h_in, hidden, True, device)
    x, h0, c0 = _inputs(mode, steps, batch, h_in, hidden, device)
    ref_out, ref_state = m(x, (h0, c0) if mode == "lstm" else h0)
    ref_h, ref_c = ref_state if mode == "lstm" else (ref_state, None)
    out, h_n, c_n = _both_directions(mode, m, x, h0, c0, None)
    torch.testing.assert_close(out, ref_out, **F32)
    torch.testing.assert_close(h_n, ref_h, **F32)
    if mode == "lstm":
        torch.testing.assert_close(c_n, ref_c, **F32)
    wrt = [x, h0] + ([c0] if c0 is not None else []) + list(m.parameters())
    for got, want in zip(_grads(_loss(out, h_n, c_n), wrt), _grads(_loss(ref_out, ref_h, ref_c), wrt)):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_parity_without_bias_and_batch_beyond_one_block(mode, device):
    """bias=False, and N=20 > BLOCK_N=16: two programs, the second with padded rows."""
    steps, batch, h_in, hidden = 3, 20, 5, 4
    m = _torch_module(mode, h_in, hidden, False, device)
    x, h0, c0 = _inputs(mode, steps, batch, h_in, hidden, device)
    ref_out, ref_state = m(x, (h0, c0) if mode == "lstm" else h0)
    ref_h, ref_c = ref_state if mode == "lstm" else (ref_state, None)
    out, h_n, c_n = _both_directions(mode, m, x, h0, c0, None)
    torch.testing.assert_close(out, ref_out, **F32)
    torch.testing.assert_close(h_n, ref_h, **F32)
    wrt = [x, h0] + ([c0] if c0 is not None else []) + list(m.parameters())
    for got, want in zip(_grads(_loss(out, h_n, c_n), wrt), _grads(_loss(ref_out, ref_h, ref_c), wrt)):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_lengths_parity_with_packed_torch(mode, device):
    """Padded batch + lengths == torch.nn on a PackedSequence: zero outputs at padding, each
    sequence's own last state, the reverse direction starting at the last real step."""
    steps, batch, h_in, hidden = 6, 4, 5, 4
    lengths = torch.tensor([3, 6, 1, 4])
    m = _torch_module(mode, h_in, hidden, True, device)
    x, h0, c0 = _inputs(mode, steps, batch, h_in, hidden, device)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    ref_packed, ref_state = m(packed, (h0, c0) if mode == "lstm" else h0)
    ref_out, _ = pad_packed_sequence(ref_packed, total_length=steps)
    ref_h, ref_c = ref_state if mode == "lstm" else (ref_state, None)
    out, h_n, c_n = _both_directions(mode, m, x, h0, c0, lengths.to(device))
    assert out[3:, 0].abs().max().item() == 0.0  # padded steps of sequence 0 are exactly zero
    torch.testing.assert_close(out, ref_out, **F32)
    torch.testing.assert_close(h_n, ref_h, **F32)
    if mode == "lstm":
        torch.testing.assert_close(c_n, ref_c, **F32)
    wrt = [x, h0] + ([c0] if c0 is not None else []) + list(m.parameters())
    for got, want in zip(_grads(_loss(out, h_n, c_n), wrt), _grads(_loss(ref_out, ref_h, ref_c), wrt)):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_bfloat16_smoke_parity(mode, device):
    """bfloat16 inputs and weights (float32 state): close to torch.nn in float32 on the same
    bfloat16-rounded weights and inputs, at bfloat16 tolerance."""
    steps, batch, h_in, hidden = 4, 3, 16, 16
    m = _torch_module(mode, h_in, hidden, True, device)
    m_bf = _torch_module(mode, h_in, hidden, True, device).to(torch.bfloat16)
    with torch.no_grad():
        for p, q in zip(m.parameters(), m_bf.parameters()):
            p.copy_(q.float())  # the float32 reference sees exactly the bfloat16 weights
    x, h0, c0 = _inputs(mode, steps, batch, h_in, hidden, device, torch.bfloat16)
    ref_in = [t.detach().float().requires_grad_() for t in (x, h0) + ((c0,) if c0 is not None else ())]
    ref_out, ref_state = m(ref_in[0], tuple(ref_in[1:]) if mode == "lstm" else ref_in[1])
    ref_h, ref_c = ref_state if mode == "lstm" else (ref_state, None)
    out, h_n, c_n = _both_directions(mode, m_bf, x, h0, c0, None)
    assert out.dtype == h_n.dtype == torch.bfloat16
    bf = dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.float(), ref_out, **bf)
    torch.testing.assert_close(h_n.float(), ref_h, **bf)
    got = _grads(_loss(out, h_n, c_n), [x, *list(m_bf.parameters())])
    want = _grads(_loss(ref_out, ref_h, ref_c), [ref_in[0], *list(m.parameters())])
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_streamed_weights_equal_resident_weights(mode, device, monkeypatch):
    """W_hh kept on chip for the whole loop or streamed one gate tile per step through the
    scratch: the same numbers."""
    steps, batch, h_in, hidden = 4, 2, 3, 16
    m = _torch_module(mode, h_in, hidden, True, device)
    x, h0, c0 = _inputs(mode, steps, batch, h_in, hidden, device)
    resident = _both_directions(mode, m, x, h0, c0, None)
    g_res = _grads(_loss(*resident), [x, h0, *m.parameters()])
    monkeypatch.setattr(tl_layer, "_RESIDENT_BYTES", 0)
    streamed = _both_directions(mode, m, x, h0, c0, None)
    g_str = _grads(_loss(*streamed), [x, h0, *m.parameters()])
    for a, b in zip(
        [t for t in resident if t is not None] + list(g_res), [t for t in streamed if t is not None] + list(g_str)
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_inference_forward_equals_training_forward(device):
    """The no-grad launch (saves nothing) computes the same outputs as the saving one."""
    steps, batch, h_in, hidden = 5, 3, 4, 4
    m = _torch_module("lstm", h_in, hidden, True, device)
    x, h0, c0 = _inputs("lstm", steps, batch, h_in, hidden, device)
    lengths = torch.tensor([5, 2, 4], device=device)
    train = _both_directions("lstm", m, x, h0, c0, lengths)
    with torch.no_grad():
        infer = _both_directions("lstm", m, x, h0, c0, lengths)
    assert all(not t.requires_grad for t in infer)
    for a, b in zip(train, infer):
        torch.testing.assert_close(a.detach(), b, atol=1e-6, rtol=1e-6)


def test_unsupported_calls_fall_back_to_the_generic_paths(device):
    """H > 256, float64 and LSTM projections are not the kernels' business: the same results
    as the fused form, through the fallback."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, device=device, dtype=torch.float64)
    h0 = torch.zeros(2, 257, device=device, dtype=torch.float64)
    w_ih = torch.randn(257, 3, device=device, dtype=torch.float64) * 0.1
    w_hh = torch.randn(257, 257, device=device, dtype=torch.float64) * 0.1
    assert not tl_layer.supports("rnn_tanh", x.float(), w_hh.float(), None)  # H = 257 > 256
    assert not tl_layer.supports("rnn_tanh", x, w_hh, None)  # float64
    got = triton_layer("rnn_tanh", x, h0, None, w_ih, w_hh, None, None, None, False, None)
    want = functional.fused_layer("rnn_tanh", x, h0, None, w_ih, w_hh, None, None, None, False, None)
    torch.testing.assert_close(got[0], want[0])
    # shared memory: one W_hh tile must fit (float32 H=256 would need 272 KiB on sm_90)
    assert tl_layer._fits(128, torch.float32) and tl_layer._fits(256, torch.bfloat16)
    assert not tl_layer._fits(256, torch.float32) and not tl_layer._fits(257, torch.bfloat16)
    w_hr = torch.randn(2, 4, device=device)
    assert not tl_layer.supports("lstm", x.float(), torch.randn(16, 2, device=device), w_hr)


def test_lstm_without_c0_is_an_error(device):
    x = torch.randn(2, 1, 3, device=device)
    w_ih, w_hh = torch.randn(16, 3, device=device), torch.randn(16, 4, device=device)
    with pytest.raises(ValueError, match="needs c0"):
        triton_layer("lstm", x, torch.zeros(1, 4, device=device), None, w_ih, w_hh, None, None, None, False, None)


def test_tuning_overrides_are_validated_and_keep_results(device, monkeypatch):
    """$RNNLAB_TRITON_BLOCK_N / _PRECISION: bad values are errors naming the variable; a larger
    batch block gives the same numbers."""
    steps, batch, h_in, hidden = 3, 2, 3, 4
    m = _torch_module("gru", h_in, hidden, True, device)
    x, h0, _ = _inputs("gru", steps, batch, h_in, hidden, device)
    base = _both_directions("gru", m, x, h0, None, None)
    monkeypatch.setattr(tl_layer, "_BLOCK_N", 32)
    torch.testing.assert_close(_both_directions("gru", m, x, h0, None, None)[0], base[0], atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(tl_layer, "_BLOCK_N", 24)
    with pytest.raises(ValueError, match="RNNLAB_TRITON_BLOCK_N must be a power of two >= 16 .* got 24"):
        _both_directions("gru", m, x, h0, None, None)
    monkeypatch.setattr(tl_layer, "_BLOCK_N", 0)
    monkeypatch.setattr(tl_layer, "_PRECISION", "fp16")
    with pytest.raises(ValueError, match="RNNLAB_TRITON_PRECISION must be ieee, tf32 or tf32x3, got 'fp16'"):
        _both_directions("gru", m, x, h0, None, None)


def test_double_backward_is_refused(device):
    """The kernels' backward is not itself differentiable: asking for second derivatives must fail loudly."""
    m = _torch_module("gru", 3, 4, True, device)
    x, h0, _ = _inputs("gru", 2, 2, 3, 4, device)
    out, h_n, _ = _both_directions("gru", m, x, h0, None, None)
    (gx,) = torch.autograd.grad(out.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_out_of_resources_falls_back_once_with_a_warning(device, monkeypatch):
    """A variant this GPU cannot launch is remembered and served by the fallback path."""
    from triton.runtime.errors import OutOfResources

    calls = []

    class Refusing:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append(grid)
                raise OutOfResources(300000, 232448, "shared memory")

            return launch

    monkeypatch.setattr(tl_layer.K, "rnn_forward_kernel", Refusing())
    monkeypatch.setattr(tl_layer, "_declined", set())
    m = _torch_module("gru", 3, 4, True, device)
    x, h0, _ = _inputs("gru", 3, 2, 3, 4, device)
    with pytest.warns(UserWarning, match="out of resource: shared memory"):
        got = _both_directions("gru", m, x, h0, None, None)
    got_again = _both_directions("gru", m, x, h0, None, None)  # remembered: no launch, no warning
    assert len(calls) == 2  # one per direction
    want = _both_directions("gru", m, x, h0, None, None, fn=functional.fused_layer)
    for a, b, c in zip(got, got_again, want):
        if c is not None:
            torch.testing.assert_close(a, c, **F32)
            torch.testing.assert_close(b, c, **F32)
