"""Cell options on the modules: parity of the impls (seeded masks) through every layout, what
each option does in training and eval, parameters and state_dict, seeding, the fallback
warning of impl="fast", and a module-level gradcheck with weight drop."""

from __future__ import annotations

import warnings

import pytest
import torch
from nn_helpers import IMPLS, TOL, run_with_grads
from options_helpers import MODULE_CASES, MODULE_IDS, MODULE_PAIRS, f32_atol, randomize_option_parameters
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import rnnlab.kernels
import rnnlab.nn as rnn
from rnnlab.kernels import bptt, compiled, native
from rnnlab.nn import functional
from rnnlab.nn.options import CellOptions, OptionFallbackWarning

L, N, H_IN, H = 5, 3, 3, 4


def _make(cls: str, impl: str, dtype: torch.dtype, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    module = getattr(rnn, cls)(H_IN, H, impl=impl, dtype=dtype, **kwargs)
    randomize_option_parameters(module)
    return module


def _seeded(module, seed: int, *args, **kwargs):
    """Forward + gradients with the masks drawn from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return run_with_grads(module, *args, **kwargs)


def _assert_close(expected, got, dtype, layer_norm: bool, where: str, loose_ln: bool = False) -> None:
    """``loose_ln``: float32 with layer norm at 1e-4 of scale instead of 5e-5 (the compiled loops:
    in the 2-layer bidirectional LSTM with every option, normalising blocks of H = 4 units, its
    layer-0 gradients land 6.5e-5 of scale from the reference's where the fused form's land
    1.1e-5; with std::tanh instead of the loop's vectorised tanh still 5.3e-5; every other case
    of this test stays within 5e-5)."""
    assert expected.keys() == got.keys(), where
    for key, e in expected.items():
        g = got[key]
        if e is None:
            assert g is None, f"{where}: {key}"
            continue
        atol = f32_atol(e, layer_norm) if dtype == torch.float32 else TOL[dtype]
        if loose_ln and layer_norm and dtype == torch.float32:
            atol *= 2
        torch.testing.assert_close(g, e, atol=atol, rtol=TOL[dtype], msg=lambda m: f"{where}: {key}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls, case", MODULE_PAIRS, ids=MODULE_IDS)
def test_impls_agree_with_options(cls: str, case: str, dtype: torch.dtype) -> None:
    """reference, fused and fast (the fused form for the options it has no kernel for) give the
    same outputs, states and gradients of every parameter, in training (same seed, same masks)
    and eval, over stacked x bidirectional x batch_first x lengths x given states."""
    kwargs = MODULE_CASES[cls][case]
    is_lstm = cls == "LSTM"
    layer_norm = kwargs.get("layer_norm", False)
    layouts = [
        dict(num_layers=2, bidirectional=True, batch_first=False, lengths=torch.tensor([5, 2, 4]), state=True),
        dict(num_layers=1, bidirectional=False, batch_first=True, lengths=None, state=False),
    ]
    for layout in layouts:
        lengths, given = layout.pop("lengths"), layout.pop("state")
        modules = {impl: _make(cls, impl, dtype, **layout, **kwargs) for impl in IMPLS}
        gen = torch.Generator().manual_seed(1)
        shape = (N, L, H_IN) if layout["batch_first"] else (L, N, H_IN)
        x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        state = None
        if given:
            layers = layout["num_layers"] * (2 if layout["bidirectional"] else 1)
            h0 = torch.randn(layers, N, H, generator=gen, dtype=torch.float64).to(dtype)
            state = (h0, torch.randn(layers, N, H, generator=gen, dtype=torch.float64).to(dtype)) if is_lstm else h0
        extra = {} if lengths is None else {"lengths": lengths}
        for training in (True, False):
            for m in modules.values():
                m.train(training)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptionFallbackWarning)
                results = {impl: _seeded(m, 11, x, state, is_lstm, **extra) for impl, m in modules.items()}
            for impl in ("fused", "fast"):
                where = f"{cls} {case} {dtype} {layout} train={training} impl={impl}"
                _assert_close(results["reference"], results[impl], dtype, layer_norm, where, impl == "fast")


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_packed_and_unbatched_input_with_options(cls: str) -> None:
    """A PackedSequence equals padded input with lengths (in training with sequences already in
    the pack's order, since masks are drawn per row of the sorted batch; in eval also unsorted);
    unbatched input equals a batch of one; with every option of the class at once."""
    kwargs = MODULE_CASES[cls]["combined"]
    is_lstm = cls == "LSTM"
    module = _make(cls, "reference", torch.float64, num_layers=2, bidirectional=True, **kwargs)
    for training, lens in ((True, [5, 4, 3, 1]), (False, [3, 5, 1, 4])):
        module.train(training)
        seqs = [torch.randn(n, H_IN, dtype=torch.float64) for n in lens]
        torch.manual_seed(4)
        out_p, hid_p = module(pack_sequence(seqs, enforce_sorted=training))
        padded = nn.utils.rnn.pad_sequence(seqs)  # (5, 4, H_in)
        torch.manual_seed(4)
        out, hid = module(padded, lengths=torch.tensor(lens))
        unpacked, _ = nn.utils.rnn.pad_packed_sequence(out_p)
        torch.testing.assert_close(unpacked, out, atol=1e-14, rtol=1e-14)
        for a, b in zip(hid_p if is_lstm else (hid_p,), hid if is_lstm else (hid,)):
            torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-14)
    module.train()
    torch.manual_seed(6)
    out_u, _ = module(seqs[1])  # (5, H_in) unbatched
    torch.manual_seed(6)
    out_b, _ = module(seqs[1].unsqueeze(1))
    torch.testing.assert_close(out_u, out_b.squeeze(1), atol=0, rtol=0)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_module_gradcheck_with_weight_drop(cls: str) -> None:
    """Through the module (two layers, both directions, lengths): every option of the class with
    the masks fixed by reseeding, gradients reaching the raw weight_hh through weight drop."""
    kwargs = dict(MODULE_CASES[cls]["combined"])
    if cls == "LSTM":
        kwargs["proj_size"] = 2
    module = _make(cls, "fused", torch.float64, num_layers=2, bidirectional=True, batch_first=True, **kwargs)
    x = torch.randn(2, 3, H_IN, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])
    names = [n for n, _ in module.named_parameters()]

    def f(x, *params):
        torch.manual_seed(0)
        out, hidden = torch.func.functional_call(module, dict(zip(names, params)), (x,), {"lengths": lengths})
        return (out, *hidden) if cls == "LSTM" else (out, hidden)

    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)


def test_all_options_off_is_the_plain_layer_bit_for_bit() -> None:
    """Every option passed at its default: same parameters, state_dict names, printout and
    (fast path, no warning) the same bits as the plain layer and as torch.nn."""
    defaults = dict(layer_norm=False, recurrent_dropout=0.0, zoneout=0.0, weight_drop=0.0)
    for cls, extra in (
        ("LSTM", dict(peephole=False, gate_activation="sigmoid", activation="tanh")),
        ("GRU", {}),
        ("RNN", {}),
    ):
        torch.manual_seed(0)
        plain = getattr(rnn, cls)(H_IN, H, num_layers=2, bidirectional=True)
        torch.manual_seed(0)
        same = getattr(rnn, cls)(H_IN, H, num_layers=2, bidirectional=True, **defaults, **extra)
        assert list(plain.state_dict()) == list(same.state_dict()) == list(plain.to_torch().state_dict())
        assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), same.parameters()))
        assert repr(plain) == repr(same)
        x = torch.randn(L, N, H_IN, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning
            a, b = plain(x, lengths=torch.tensor([5, 3, 2]))[0], same(x, lengths=torch.tensor([5, 3, 2]))[0]
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_eval_mode_drops_dropout_and_takes_the_zoneout_expectation(cls: str) -> None:
    """In eval recurrent dropout and weight drop are off (the plain layer, fast path, bit for
    bit); zoneout takes its expectation: one step gives h_1 = p h_0 + (1 - p) h~_1."""
    torch.manual_seed(0)
    plain = getattr(rnn, cls)(H_IN, H).eval()
    dropped = getattr(rnn, cls).from_torch(plain.to_torch(), recurrent_dropout=0.5, weight_drop=0.5).eval()
    x = torch.randn(L, N, H_IN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(plain(x)[0], dropped(x)[0])
    p = 0.3
    zoned = getattr(rnn, cls).from_torch(plain.to_torch(), zoneout=p).eval()
    h0 = torch.randn(1, N, H)
    hx = (h0, torch.randn(1, N, H)) if cls == "LSTM" else h0
    x1 = x[:1]
    _, new = plain(x1, hx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionFallbackWarning)
        _, got = zoned(x1, hx)
    for g, n, s in zip(
        got if cls == "LSTM" else (got,), new if cls == "LSTM" else (new,), hx if cls == "LSTM" else (hx,)
    ):
        torch.testing.assert_close(g, p * s + (1 - p) * n, atol=1e-6, rtol=1e-6)


def test_zoneout_in_training_keeps_a_fraction_p_of_the_units() -> None:
    """In training each unit keeps its previous value exactly with probability p (h and c of
    the LSTM with their own rates)."""
    torch.manual_seed(0)
    lstm = rnn.LSTM(H_IN, 16, zoneout=(0.3, 0.6), impl="fused")
    x = torch.randn(60, 8, H_IN)
    with torch.no_grad():
        h_prev = torch.zeros(8, 16)
        c_prev = torch.zeros(8, 16)
        torch.manual_seed(1)
        out, _ = lstm(x)
        # the cell states are not returned per step: run step by step with the same masks
        torch.manual_seed(1)
        cell = rnn.LSTMCell(H_IN, 16, zoneout=(0.3, 0.6), impl="fused")
    kept_h = (out[1:] == out[:-1]).float().mean().item()
    assert 0.27 < kept_h < 0.33, kept_h
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in lstm.state_dict().items()})
    kept_c, total = 0, 0
    with torch.no_grad():
        for t in range(60):
            h, c = cell(x[t], (h_prev, c_prev))
            kept_c += int((c == c_prev).sum())
            total += c.numel()
            h_prev, c_prev = h, c
    assert 0.56 < kept_c / total < 0.64, kept_c / total


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_recurrent_dropout_is_one_mask_per_sequence_on_the_recurrent_input(cls: str) -> None:
    """With a batch of one, recurrent dropout with mask m equals the plain layer with the columns
    of W_hh scaled by m (the same mask at every step, on the recurrent product only: the GRU's
    carry z * h_{t-1} and the LSTM's cell keep the undropped state)."""
    torch.manual_seed(0)
    p = 0.5
    layer = getattr(rnn, cls)(H_IN, 8, recurrent_dropout=p, impl="fused")
    x = torch.randn(7, 1, H_IN)
    torch.manual_seed(3)
    got, _ = layer(x)
    torch.manual_seed(3)
    mask = torch.empty(1, 8).bernoulli_(1 - p) / (1 - p)  # the module's first (only) draw
    assert 0 < int((mask == 0).sum()) < 8
    plain = getattr(rnn, cls)(H_IN, 8, impl="fused")
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(mask)  # (G*H, H) columns scaled by m
    torch.testing.assert_close(got, plain(x)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_weight_drop_masks_w_hh_and_its_gradient_reaches_the_raw_weight(cls: str) -> None:
    """Weight drop = the plain layer on W_hh * M / (1 - p) with one mask per forward call: on
    the fast path (no warning, bit for bit), gradient dL/dW_hh = dL/dW~ * M / (1 - p), and the
    state_dict holds only the raw weight under torch's name."""
    torch.manual_seed(0)
    p = 0.4
    layer = getattr(rnn, cls)(H_IN, H, weight_drop=p)
    plain = getattr(rnn, cls)(H_IN, H)
    assert list(layer.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(L, N, H_IN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(5)
        out, _ = layer(x)
    torch.manual_seed(5)
    mask = torch.empty_like(layer.weight_hh_l0).bernoulli_(1 - p) / (1 - p)
    w_eff = (plain.weight_hh_l0 * mask).detach().requires_grad_()
    expected, _ = torch.func.functional_call(plain, {**dict(plain.named_parameters()), "weight_hh_l0": w_eff}, (x,))
    assert torch.equal(out, expected)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(layer.weight_hh_l0.grad, w_eff.grad * mask, atol=1e-6, rtol=1e-6)
    torch.manual_seed(6)
    assert not torch.equal(layer(x)[0], out)  # a new mask per forward call


def test_masks_are_reproducible_from_the_seed() -> None:
    """Same seed, same masks and results (also across impls); another seed, other results;
    eval needs no seed."""
    for cls, kwargs in (("LSTM", MODULE_CASES["LSTM"]["combined"]), ("GRU", MODULE_CASES["GRU"]["combined"])):
        layer = _make(cls, "fused", torch.float32, num_layers=2, bidirectional=True, **kwargs)
        x = torch.randn(L, N, H_IN)
        torch.manual_seed(10)
        a = layer(x)[0]
        torch.manual_seed(10)
        b = layer(x)[0]
        torch.manual_seed(11)
        c = layer(x)[0]
        assert torch.equal(a, b) and not torch.allclose(a, c)
        layer.eval()
        assert torch.equal(layer(x)[0], layer(x)[0])


def test_parameters_state_dict_and_torch_interop() -> None:
    """The options' parameters, their initial values, state_dict round trip, from_torch with
    options, to_torch refused."""
    lstm = rnn.LSTM(H_IN, H, num_layers=2, bidirectional=True, layer_norm=True, peephole=True)
    names = dict(lstm.named_parameters())
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert names["ln_weight_ih" + suffix].shape == (4 * H,) and torch.equal(
            names["ln_weight_ih" + suffix], torch.ones(4 * H)
        )
        assert names["ln_weight_hh" + suffix].shape == (4 * H,)
        assert torch.equal(names["ln_weight_c" + suffix], torch.ones(H))
        assert torch.equal(names["ln_bias_c" + suffix], torch.zeros(H))
        assert names["weight_peephole" + suffix].shape == (3 * H,)
        assert names["weight_peephole" + suffix].abs().max() <= 1 / H**0.5
    assert "ln_bias_c_l0" not in dict(rnn.LSTM(H_IN, H, layer_norm=True, bias=False).named_parameters())
    gru = rnn.GRU(H_IN, H, layer_norm=True)
    assert [n for n, _ in gru.named_parameters()][4:] == ["ln_weight_ih_l0", "ln_weight_hh_l0"]
    assert gru.ln_weight_ih_l0.shape == (3 * H,)
    # torch's parameters keep their torch.nn values for the same seed
    torch.manual_seed(3)
    ref = nn.LSTM(H_IN, H, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ours = rnn.LSTM(H_IN, H, num_layers=2, bidirectional=True, layer_norm=True, peephole=True)
    for name, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    # round trip
    randomize_option_parameters(ours)
    copy = rnn.LSTM(H_IN, H, num_layers=2, bidirectional=True, layer_norm=True, peephole=True)
    copy.load_state_dict(ours.state_dict())
    x = torch.randn(L, N, H_IN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionFallbackWarning)
        assert torch.equal(copy(x)[0], ours(x)[0])
        with pytest.raises(RuntimeError, match="Missing key"):
            rnn.LSTM(H_IN, H, num_layers=2, bidirectional=True, layer_norm=True).load_state_dict(ref.state_dict())
        # from_torch with options: torch's weights, options at their initial values
        added = rnn.LSTM.from_torch(ref, layer_norm=True, zoneout=0.1)
        assert added.layer_norm and added.zoneout == (0.1, 0.1)  # LSTM: (p_h, p_c)
        assert rnn.GRU(3, 4, zoneout=0.2).zoneout == 0.2
        assert torch.equal(added.weight_hh_l1_reverse, ref.weight_hh_l1_reverse)
    with pytest.raises(ValueError, match=r"LSTM.to_torch: torch.nn.LSTM has no layer_norm, zoneout; only a layer"):
        added.to_torch()
    with pytest.raises(ValueError, match="GRUCell.to_torch: torch.nn.GRUCell has no weight_drop"):
        rnn.GRUCell(2, 3, weight_drop=0.1).to_torch()


def test_printout_names_the_options() -> None:
    assert repr(rnn.LSTM(3, 4, zoneout=(0.1, 0.2), peephole=True)) == "LSTM(3, 4, zoneout=(0.1, 0.2), peephole=True)"
    assert repr(rnn.LSTM(3, 4, zoneout=0.1)) == "LSTM(3, 4, zoneout=0.1)"
    assert (
        repr(rnn.GRU(3, 4, layer_norm=True, recurrent_dropout=0.2, weight_drop=0.3, activation="relu"))
        == "GRU(3, 4, layer_norm=True, recurrent_dropout=0.2, weight_drop=0.3, activation='relu')"
    )
    assert repr(rnn.RNNCell(3, 4, zoneout=0.5)) == "RNNCell(3, 4, zoneout=0.5)"


def test_compiled_loops_run_every_option_without_warning() -> None:
    """With the compiled CPU loops, impl="fast" runs every option of the class itself: no
    warning, and layer_function answers the compiled layer for all of them at once."""
    if compiled.ops() is None:
        pytest.skip(f"compiled CPU loops unavailable: {compiled.unavailable_reason()}")
    for cls, mode in (("LSTM", "lstm"), ("GRU", "gru"), ("RNN", "rnn_tanh")):
        kwargs = MODULE_CASES[cls]["combined"]
        module = _make(cls, "fast", torch.float32, num_layers=2, bidirectional=True, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            module(torch.randn(L, N, H_IN))[0].sum().backward()
        names = tuple(rnnlab.kernels.COMPILED_OPTIONS[mode])
        kw = dict(has_lengths=True, has_proj=False, training=True, options=names)
        assert rnnlab.kernels.layer_function(mode, torch.device("cpu"), torch.float32, **kw) is native.layer


def test_fast_impl_warns_once_per_forward_and_computes_the_fused_form(monkeypatch) -> None:
    """Without the compiled loops (RNNLAB_COMPILED=0), impl="fast" with an option the Python fast
    path has no kernel for: exactly one OptionFallbackWarning per forward (whatever the number of
    layers and directions) naming the options, and the fused form's result bit for bit; options it
    runs (weight_drop) or that are off in eval (recurrent_dropout) give no warning."""
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    kwargs = dict(layer_norm=True, recurrent_dropout=0.2, num_layers=2, bidirectional=True)
    fast = _make("LSTM", "fast", torch.float32, **kwargs)
    fused = _make("LSTM", "fused", torch.float32, **kwargs)
    x = torch.randn(L, N, H_IN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(2)
        a = fast(x)[0]
    torch.manual_seed(2)
    assert torch.equal(a, fused(x)[0])
    assert [w.category for w in caught] == [OptionFallbackWarning]
    assert str(caught[0].message) == (
        "rnnlab.kernels: the fast path has no kernel for layer_norm, recurrent_dropout on cpu yet; "
        "this forward runs impl='fused' instead (the same equations through autograd, slower)"
    )
    for module in (
        _make("GRU", "fast", torch.float32, weight_drop=0.5),
        _make("GRU", "fast", torch.float32, recurrent_dropout=0.5).eval(),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            module(x)
    assert fast.eval().options_on() == ["layer_norm"]
    plain = rnnlab.kernels.layer_function("gru", x.device, x.dtype, has_lengths=False, has_proj=False, training=True)
    assert plain is bptt.layer  # weight_drop runs on the plain fast path
    assert (
        rnnlab.kernels.layer_function(
            "gru", x.device, x.dtype, has_lengths=False, has_proj=False, training=True, options=("weight_drop",)
        )
        is plain
    )


def test_bptt_layer_routes_active_options_to_the_fused_form() -> None:
    """Called directly with active options, the fast layer warns and returns the fused form's
    result; with options=None or inactive options it is the hand-written path, unchanged."""
    gen = torch.Generator().manual_seed(0)
    x, h0, c0 = torch.randn(4, 2, 3, generator=gen), torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    w_ih, w_hh = torch.randn(20, 3, generator=gen), torch.randn(20, 5, generator=gen)
    args = ("lstm", x, h0, c0, w_ih, w_hh, None, None, None, False, None)
    opt = CellOptions(zoneout_h=0.2, zoneout_c=0.1)
    with pytest.warns(
        OptionFallbackWarning, match=r"rnnlab.kernels.bptt.layer: no hand-written backward for zoneout yet"
    ):
        got = bptt.layer(*args, opt)
    for a, b in zip(got, functional.fused_layer(*args, opt)):
        assert torch.equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a, b in zip(bptt.layer(*args, CellOptions()), bptt.layer(*args)):
            assert torch.equal(a, b)


def test_gpu_layer_functions_refuse_active_options(monkeypatch) -> None:
    """The CUDA-graph layer (importable without a GPU) takes the options argument and refuses
    active options (layer_function never hands it any); the CUDA dispatch declines weight drop
    on the graph path (one graph per W_hh storage) with one warning."""
    from rnnlab.kernels import cuda_graphs
    from rnnlab.kernels.triton import cuda_layer_function

    monkeypatch.setenv("RNNLAB_GPU_KERNEL", "graphs")
    kw = dict(has_lengths=False, has_proj=False, training=True)
    with pytest.warns(OptionFallbackWarning, match="RNNLAB_GPU_KERNEL=graphs captures one graph per W_hh storage"):
        assert cuda_layer_function("lstm", torch.device("cuda"), torch.float32, **kw, options=("weight_drop",)) is None

    x = torch.randn(2, 1, 3)
    args = ("gru", x, torch.zeros(1, 4), None, torch.randn(12, 3), torch.randn(12, 4), None, None, None, False, None)
    with pytest.raises(ValueError, match="graphed_layer: no cell options on this path, got layer_norm"):
        cuda_graphs.graphed_layer(*args, CellOptions(ln_weight_ih=torch.ones(12), ln_weight_hh=torch.ones(12)))
    out, h, _ = cuda_graphs.graphed_layer(*args, None)  # off CUDA: the fused form
    assert torch.equal(h, functional.fused_layer(*args)[1])


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_zoneout_masks_keep_with_probability_p(p: float) -> None:
    """The zoneout keep-masks (two 15-bit entries per 31-bit draw): 0/1 values of the input's
    dtype, any shape (odd sizes too), the same for the same seed, and a keep rate of p within
    4 standard deviations over 1,000,001 entries, in both halves of each draw."""
    from rnnlab.nn.options import ZONEOUT_MASK_BITS, zoneout_mask

    like = torch.empty(1, dtype=torch.float64)
    torch.manual_seed(5)
    mask = zoneout_mask(p, (1001, 999, 1), like)
    torch.manual_seed(5)
    assert torch.equal(mask, zoneout_mask(p, (1001, 999, 1), like))
    assert mask.shape == (1001, 999, 1) and mask.dtype == torch.float64
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    q = round(p * 2**ZONEOUT_MASK_BITS) / 2**ZONEOUT_MASK_BITS
    flat = mask.flatten()
    for part in (flat, flat[0::2], flat[1::2]):
        sd = (q * (1 - q) / part.numel()) ** 0.5
        assert abs(part.mean().item() - q) < 4 * sd, (p, part.mean().item())
