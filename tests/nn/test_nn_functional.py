"""The layer functions (gradcheck, lengths), the "fast" dispatch, dropout, and that the
modules compute the equations themselves (no torch.nn RNN kernels)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnlab.kernels
import rnnlab.nn as rnn
from rnnlab.nn import functional as F

MODES = [("rnn_tanh", False), ("rnn_relu", False), ("lstm", False), ("lstm", True), ("gru", False)]


def _layer_inputs(mode: str, proj: bool, steps=3, batch=2, h_in=2, hidden=3, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)  # noqa: E731
    g = F.GATES[mode] * hidden
    h_out = 2 if proj else hidden
    x = rand(steps, batch, h_in)
    h0 = rand(batch, h_out)
    c0 = rand(batch, hidden) if mode == "lstm" else None
    w_ih, w_hh = rand(g, h_in), rand(g, h_out)
    b_ih, b_hh = (rand(g), rand(g)) if bias else (None, None)
    w_hr = rand(h_out, hidden) if proj else None
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr


@pytest.mark.parametrize("layer", [F.reference_layer, F.fused_layer], ids=["reference", "fused"])
@pytest.mark.parametrize("mode, proj", MODES, ids=[m + ("_proj" if p else "") for m, p in MODES])
def test_layer_gradcheck(layer, mode: str, proj: bool) -> None:
    """Autograd through both forms matches finite differences (float64), forward and reverse,
    with and without lengths."""
    args = _layer_inputs(mode, proj)
    tensors = [a for a in args if a is not None]
    where = [i for i, a in enumerate(args) if a is not None]
    for reverse in (False, True):
        for lengths in (None, torch.tensor([3, 1])):

            def f(*ts):
                full = list(args)
                for i, t in zip(where, ts):
                    full[i] = t
                out, h, c = layer(mode, *full, reverse, lengths)
                return (out, h) if c is None else (out, h, c)

            assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7)


def test_module_gradcheck() -> None:
    """A bidirectional two-layer LSTM with projection, through the module (layout, concat, stack)."""
    lstm = rnn.LSTM(2, 3, num_layers=2, bidirectional=True, proj_size=2, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def f(x, h0, c0, *params):
        names = [n for n, _ in lstm.named_parameters()]
        out, (h, c) = torch.func.functional_call(lstm, dict(zip(names, params)), (x, (h0, c0)), {"lengths": lengths})
        return out, h, c

    assert torch.autograd.gradcheck(
        f, (x, h0, c0, *[p.detach().requires_grad_() for p in lstm.parameters()]), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("mode, proj", MODES, ids=[m + ("_proj" if p else "") for m, p in MODES])
def test_reference_and_fused_agree_without_bias(mode: str, proj: bool) -> None:
    args = _layer_inputs(mode, proj, bias=False, seed=4)
    for reverse in (False, True):
        a = F.reference_layer(mode, *args, reverse, torch.tensor([2, 3]))
        b = F.fused_layer(mode, *args, reverse, torch.tensor([2, 3]))
        for u, v in zip(a, b):
            if u is None:
                assert v is None
            else:
                torch.testing.assert_close(v, u, atol=1e-12, rtol=1e-12)


def test_lengths_semantics_of_a_layer() -> None:
    """Padded steps give zero output; forward h_n is the state at the last real step; reverse
    starts at the last real step from h0."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _layer_inputs("gru", False, steps=4, batch=2)
    lengths = torch.tensor([4, 2])
    out, h_n, _ = F.fused_layer("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, False, lengths)
    short, h_short, _ = F.fused_layer("gru", x[:2, 1:], h0[1:], None, w_ih, w_hh, b_ih, b_hh, None, False, None)
    torch.testing.assert_close(out[:2, 1:], short)
    torch.testing.assert_close(h_n[1:], h_short)
    assert torch.all(out[2:, 1] == 0)
    out_r, h_r, _ = F.fused_layer("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, True, lengths)
    short_r, h_short_r, _ = F.fused_layer("gru", x[:2, 1:], h0[1:], None, w_ih, w_hh, b_ih, b_hh, None, True, None)
    torch.testing.assert_close(out_r[:2, 1:], short_r)
    torch.testing.assert_close(h_r[1:], h_short_r)
    assert torch.all(out_r[2:, 1] == 0)


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match=r"mode must be one of 'rnn_tanh', 'rnn_relu', 'lstm', 'gru', got 'lstmp'"):
        F.fused_layer("lstmp", *_layer_inputs("lstm", False), False, None)


def test_fast_uses_the_kernel_it_is_given(monkeypatch) -> None:
    """impl="fast" asks rnnlab.kernels once per forward and calls what it returns per layer and
    direction; with None it computes exactly what impl="fused" computes."""
    lstm = rnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(5, 2, 3)
    fused = rnn.LSTM.from_torch(lstm.to_torch(), impl="fused")
    with monkeypatch.context() as m:
        m.setattr(rnnlab.kernels, "layer_function", lambda *args, **kwargs: None)
        assert torch.equal(lstm(x)[0], fused(x)[0])  # no kernel for the case: exactly fused

    asked, calls, returned = [], [], []

    def layer_function(mode, device, dtype, *, has_lengths, has_proj, training, options):
        asked.append((mode, device, dtype, has_lengths, has_proj, training))
        assert options == ()  # no cell options on

        def kernel(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths, options):
            assert options is None
            calls.append((tuple(x.shape), reverse, lengths is not None))
            out, h, c = F.fused_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)
            returned.append(out + 1.0)
            return returned[-1], h, c

        return kernel

    monkeypatch.setattr(rnnlab.kernels, "layer_function", layer_function)
    with torch.no_grad():
        out, _ = lstm(x.transpose(0, 1).contiguous().transpose(0, 1), lengths=torch.tensor([5, 3]))
    assert asked == [("lstm", x.device, x.dtype, True, True, False)]
    assert calls == [
        ((5, 2, 3), False, True),
        ((5, 2, 3), True, True),
        ((5, 2, 4), False, True),
        ((5, 2, 4), True, True),
    ]
    lstm(x)
    assert asked[-1] == ("lstm", x.device, x.dtype, False, True, True)  # parameters need gradients
    reference = rnn.LSTM.from_torch(lstm.to_torch(), impl="reference")
    reference(x)
    assert len(asked) == 2  # only impl="fast" asks
    assert torch.equal(out, torch.cat(returned[2:4], dim=2))  # the module returns what the kernel returned


def test_dropout_between_layers() -> None:
    torch.manual_seed(0)
    gru = rnn.GRU(3, 8, num_layers=2, dropout=0.5)
    x = torch.randn(6, 4, 3)
    gru.eval()
    eval_out = gru(x)[0]
    torch.testing.assert_close(eval_out, gru.to_torch().eval()(x)[0], atol=1e-5, rtol=1e-5)  # eval: no dropout
    gru.train()
    torch.manual_seed(7)
    a = gru(x)[0]
    torch.manual_seed(7)
    b = gru(x)[0]
    torch.manual_seed(8)
    c = gru(x)[0]
    assert torch.equal(a, b)  # same seed, same masks
    assert not torch.allclose(a, c) and not torch.allclose(a, eval_out)
    # dropout=1 zeroes the first layer's output: the top layer then sees zeros
    gru.dropout = 1.0
    top = rnn.GRU(8, 8)
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in gru.state_dict().items() if "_l1" in k})
    torch.testing.assert_close(gru(x)[0], top(torch.zeros(6, 4, 8))[0], atol=0, rtol=0)


def test_no_torch_recurrent_kernels(monkeypatch) -> None:
    """Forward and backward of every module and cell with torch's RNN kernels disabled."""

    def forbidden(*args, **kwargs):
        raise AssertionError("rnnlab.nn called a torch RNN kernel")

    for name in ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"):
        monkeypatch.setattr(torch._VF, name, forbidden)
        if hasattr(torch, name):
            monkeypatch.setattr(torch, name, forbidden)
    for cls in (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell):
        monkeypatch.setattr(cls, "forward", forbidden)
    with pytest.raises(AssertionError):
        nn.LSTM(3, 4)(torch.randn(2, 1, 3))  # the patch is effective
    for impl in rnn.IMPLS:
        for module in (
            rnn.RNN(3, 4, bidirectional=True, impl=impl),
            rnn.LSTM(3, 4, proj_size=2, impl=impl),
            rnn.GRU(3, 4, num_layers=2, impl=impl),
        ):
            out, _ = module(torch.randn(5, 2, 3), lengths=torch.tensor([5, 2]))
            out.sum().backward()
        for cell in (rnn.RNNCell(3, 4, impl=impl), rnn.GRUCell(3, 4, impl=impl)):
            cell(torch.randn(2, 3)).sum().backward()
        sum(t.sum() for t in rnn.LSTMCell(3, 4, impl=impl)(torch.randn(2, 3))).backward()


def test_source_names_no_torch_recurrent_kernels() -> None:
    src = Path(rnn.__file__).parent
    pattern = re.compile(r"_VF|lstm_cell\(|gru_cell\(|rnn_tanh_cell\(|rnn_relu_cell\(|nn\.(LSTM|GRU|RNN)(Cell)?\(")
    for path in src.glob("*.py"):
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not hits, f"{path.name}: {hits}"
