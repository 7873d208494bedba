"""Parity of rnnlab.nn.RNN/LSTM/GRU with torch.nn: outputs, final states and every gradient."""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from nn_helpers import IMPL_CASES, IMPLS, KINDS, TOL, assert_same, make_pair, run_with_grads, use_impl_case
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import rnnlab.nn as rnn

L, N, H_IN, H = 4, 3, 3, 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", list(KINDS))
def test_grid_parity(
    kind: str, num_layers: int, bidirectional: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every combination of batch_first x bias x batched x given state, for every impl (and
    impl="fast" on both CPU paths)."""
    is_lstm = kind.startswith("lstm")
    tol = TOL[dtype]
    for batch_first, bias, batched, given in itertools.product([False, True], repeat=4):
        where = f"{kind} layers={num_layers} bi={bidirectional} {dtype} batch_first={batch_first} bias={bias} batched={batched} h0={given}"
        torch.manual_seed(
            zlib.crc32(repr((kind, num_layers, bidirectional, batch_first, bias, batched, given)).encode())
        )
        ref, _ = make_pair(
            kind, H_IN, H, dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias
        )
        shape = ((N, L) if batch_first else (L, N)) if batched else (L,)
        x = torch.randn(*shape, H_IN, dtype=dtype)
        state = None
        if given:
            layers = num_layers * (2 if bidirectional else 1)
            h_out = ref.proj_size if is_lstm and ref.proj_size else H
            bshape = (layers, N) if batched else (layers,)
            h0 = torch.randn(*bshape, h_out, dtype=dtype)
            state = (h0, torch.randn(*bshape, H, dtype=dtype)) if is_lstm else h0
        expected = run_with_grads(ref, x, state, is_lstm)
        for case in IMPL_CASES:
            with monkeypatch.context() as m:
                ours = getattr(rnn, KINDS[kind][0]).from_torch(ref, impl=use_impl_case(case, m))
                got = run_with_grads(ours, x, state, is_lstm)
            assert_same(expected, got, tol, f"{where} impl={case}")


@pytest.mark.parametrize("impl", IMPL_CASES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_sequence_parity(kind: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsorted PackedSequence in -> PackedSequence out, with given h0 in the user's order."""
    impl = use_impl_case(impl, monkeypatch)
    torch.manual_seed(1)
    is_lstm = kind.startswith("lstm")
    ref, ours = make_pair(kind, H_IN, H, torch.float64, impl=impl, num_layers=2, bidirectional=True)
    lengths = [3, 5, 1, 4]
    seqs = [torch.randn(n, H_IN, dtype=torch.float64, requires_grad=True) for n in lengths]
    h_out = 2 if kind == "lstm_proj" else H
    h0 = torch.randn(4, len(lengths), h_out, dtype=torch.float64)
    c0 = torch.randn(4, len(lengths), H, dtype=torch.float64)
    results = []
    for module in (ref, ours):
        packed = pack_sequence(seqs, enforce_sorted=False)
        hx = (h0, c0) if is_lstm else h0
        out, hidden = module(packed, hx)
        assert isinstance(out, nn.utils.rnn.PackedSequence)
        h_n = hidden[0] if is_lstm else hidden
        loss = (out.data**2).sum() + (h_n * torch.arange(h_n.numel(), dtype=h_n.dtype).view_as(h_n)).sum()
        grads = torch.autograd.grad(loss, [*seqs, *module.parameters()])
        results.append((out, hidden, grads))
    (o1, s1, g1), (o2, s2, g2) = results
    assert torch.equal(o1.batch_sizes, o2.batch_sizes)
    assert torch.equal(o1.sorted_indices, o2.sorted_indices)
    assert torch.equal(o1.unsorted_indices, o2.unsorted_indices)
    torch.testing.assert_close(o2.data, o1.data, atol=1e-10, rtol=1e-10)
    for a, b in zip(s1 if is_lstm else (s1,), s2 if is_lstm else (s2,)):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("impl", IMPL_CASES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_lengths_keyword_equals_packing(kind: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lengths=` on padded input equals torch.nn on the packed batch: outputs (zero at padding),
    each sequence's own final states, and gradients."""
    impl = use_impl_case(impl, monkeypatch)
    torch.manual_seed(2)
    is_lstm = kind.startswith("lstm")
    ref, ours = make_pair(kind, H_IN, H, torch.float64, impl=impl, num_layers=2, bidirectional=True, batch_first=True)
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(4, 5, H_IN, dtype=torch.float64)
    x[torch.arange(5) >= lengths.unsqueeze(1)] = 7.0  # garbage at padded steps must not matter
    h_out = 2 if kind == "lstm_proj" else H
    h0 = torch.randn(4, 4, h_out, dtype=torch.float64)
    c0 = torch.randn(4, 4, H, dtype=torch.float64)
    state = (h0, c0) if is_lstm else h0

    class PackedRef(nn.Module):
        """torch.nn on the packed batch, padded back to (N, L, D*H_out)."""

        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x, hx, lengths):
            out, hidden = self.module(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), hx)
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], hidden

    expected = run_with_grads(PackedRef(ref), x, state, is_lstm, lengths=lengths)
    expected = {k.replace("d_module.", "d_"): v for k, v in expected.items()}
    got = run_with_grads(ours, x, state, is_lstm, lengths=lengths)
    assert_same(expected, got, 1e-10, f"{kind} impl={impl}")
    assert torch.all(got["output"][torch.arange(5) >= lengths.unsqueeze(1)] == 0)
    # with full lengths the keyword changes nothing
    full = torch.full((4,), 5)
    torch.testing.assert_close(ours(x, state, lengths=full)[0], ours(x, state)[0], atol=0, rtol=0)


@pytest.mark.parametrize("impl", IMPL_CASES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_lengths_equals_each_sequence_alone(kind: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequence k with lengths[k] = n gives the outputs and states of running x[k, :n] alone."""
    impl = use_impl_case(impl, monkeypatch)
    torch.manual_seed(3)
    is_lstm = kind.startswith("lstm")
    _, ours = make_pair(kind, H_IN, H, torch.float64, impl=impl, num_layers=2, bidirectional=True, batch_first=True)
    lengths = torch.tensor([3, 1, 5])
    x = torch.randn(3, 5, H_IN, dtype=torch.float64)
    out, hidden = ours(x, lengths=lengths)
    for k, n in enumerate(lengths.tolist()):
        out_k, hidden_k = ours(x[k, :n])  # unbatched
        torch.testing.assert_close(out[k, :n], out_k, atol=1e-12, rtol=1e-12)
        for a, b in zip(hidden if is_lstm else (hidden,), hidden_k if is_lstm else (hidden_k,)):
            torch.testing.assert_close(a[:, k], b, atol=1e-12, rtol=1e-12)


CELLS = {
    "rnn_tanh": ("RNNCell", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNNCell", {"nonlinearity": "relu"}),
    "lstm": ("LSTMCell", {}),
    "gru": ("GRUCell", {}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_parity(kind: str, dtype: torch.dtype) -> None:
    """Cells: output and gradients of input, state and parameters, batched or not, bias or not."""
    name, extra = CELLS[kind]
    is_lstm = kind == "lstm"
    for bias, batched, given in itertools.product([False, True], repeat=3):
        torch.manual_seed(zlib.crc32(repr((kind, bias, batched, given)).encode()))
        ref = getattr(nn, name)(H_IN, H, bias=bias, dtype=dtype, **extra)
        x = torch.randn(*((N,) if batched else ()), H_IN, dtype=dtype, requires_grad=True)
        state = (
            [
                torch.randn(*((N,) if batched else ()), H, dtype=dtype, requires_grad=True)
                for _ in range(2 if is_lstm else 1)
            ]
            if given
            else []
        )
        results = []
        for module in [ref] + [getattr(rnn, name).from_torch(ref, impl=impl) for impl in IMPLS]:
            hx = None if not given else (tuple(state) if is_lstm else state[0])
            out = module(x, hx)
            outs = list(out) if is_lstm else [out]
            loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum() for o in outs)
            grads = torch.autograd.grad(loss, [x, *state, *module.parameters()])
            results.append(outs + list(grads))
        for impl, got in zip(IMPLS, results[1:]):
            for a, b in zip(results[0], got):
                torch.testing.assert_close(
                    b,
                    a,
                    atol=TOL[dtype],
                    rtol=TOL[dtype],
                    msg=lambda m: f"{kind} {impl} bias={bias} batched={batched}: {m}",
                )


@pytest.mark.parametrize("kind", list(KINDS) + list(CELLS))
def test_same_seed_same_initial_weights_as_torch(kind: str) -> None:
    """Same parameter names, shapes and order, and U(-1/sqrt(H), 1/sqrt(H)) drawn in torch's order."""
    name, extra = KINDS[kind] if kind in KINDS else CELLS[kind]
    kwargs = {} if name.endswith("Cell") else dict(num_layers=2, bidirectional=True)
    torch.manual_seed(5)
    ref = getattr(nn, name)(H_IN, H, **extra, **kwargs)
    torch.manual_seed(5)
    ours = getattr(rnn, name)(H_IN, H, **extra, **kwargs)
    ref_params, our_params = dict(ref.named_parameters()), dict(ours.named_parameters())
    assert list(our_params) == list(ref_params)
    for n, p in ref_params.items():
        assert torch.equal(our_params[n], p), n
    bound = 1 / H**0.5
    assert all(p.abs().max() <= bound for p in our_params.values())


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_round_trips(kind: str) -> None:
    """load_state_dict(strict=True) both ways, and from_torch / to_torch keep config and weights."""
    name, extra = KINDS[kind]
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True, bias=False, **extra)
    ref = getattr(nn, name)(H_IN, H, **kwargs)
    ours = getattr(rnn, name)(H_IN, H, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(0.5)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    back = ours.to_torch()
    assert type(back) is getattr(nn, name)
    assert (back.num_layers, back.bidirectional, back.batch_first, back.bias) == (2, True, True, False)
    x = torch.randn(N, L, H_IN)
    torch.testing.assert_close(back(x)[0], ours(x)[0], atol=1e-5, rtol=1e-5)
    again = getattr(rnn, name).from_torch(back, impl="reference")
    assert again.impl == "reference" and all(torch.equal(a, b) for a, b in zip(again.parameters(), ours.parameters()))
    with pytest.raises(TypeError, match=rf"{name}.from_torch expects a torch.nn.{name}, got Linear"):
        getattr(rnn, name).from_torch(nn.Linear(2, 2))


def test_cell_state_dict_round_trip() -> None:
    for name in ("RNNCell", "LSTMCell", "GRUCell"):
        ref = getattr(nn, name)(H_IN, H)
        ours = getattr(rnn, name).from_torch(ref)
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
        back = ours.to_torch()
        assert type(back) is getattr(nn, name)
        ref.load_state_dict(ours.state_dict(), strict=True)
    relu = rnn.RNNCell(H_IN, H, nonlinearity="relu").to_torch()
    assert relu.nonlinearity == "relu"


def test_repr_matches_torch() -> None:
    assert repr(rnn.LSTM(3, 4, num_layers=2, proj_size=2, batch_first=True)) == repr(
        nn.LSTM(3, 4, num_layers=2, proj_size=2, batch_first=True)
    )
    assert repr(rnn.GRU(3, 4, impl="reference")) == "GRU(3, 4, impl='reference')"


@pytest.mark.parametrize("kind", list(KINDS))
def test_empty_batch_like_torch(kind: str) -> None:
    """N = 0 is legal in torch.nn: empty outputs and states of the right shapes."""
    ref, ours = make_pair(kind, H_IN, H, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(L, 0, H_IN, dtype=torch.float64)
    for impl in IMPLS:
        ours.impl = impl
        (out, hidden), (ref_out, ref_hidden) = ours(x), ref(x)
        assert out.shape == ref_out.shape
        for a, b in zip(
            hidden if kind.startswith("lstm") else (hidden,), ref_hidden if kind.startswith("lstm") else (ref_hidden,)
        ):
            assert a.shape == b.shape
