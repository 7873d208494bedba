"""Cell options at the layer-function level: gradcheck (float64, fixed masks) of both forms for
every option and a few combinations, reference vs fused parity of outputs, states and every
gradient, and the equations checked one step at a time against formulas written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from options_helpers import PAIR_IDS, PAIRS, f32_atol, layer_inputs, option_leaves

from rnnlab.kernels import compiled, native
from rnnlab.nn import functional
from rnnlab.nn.options import CellOptions

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
FORMS = {"reference": functional.reference_layer, "fused": functional.fused_layer}
if compiled.ops() is not None:  # the compiled CPU loops, hand-written backward (no LSTM projection)
    FORMS["compiled"] = native.layer


def _call(form, mode, args, options, reverse, lengths, leaves):
    """Run ``form`` with the differentiable option tensors replaced by ``leaves`` (name -> tensor)."""
    if leaves:
        values = {f: getattr(options, f) for f in options.__dataclass_fields__}
        values.update(leaves)
        options = CellOptions(**values)
    out, h, c = form(mode, *args, reverse, lengths, options)
    return (out, h) if c is None else (out, h, c)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("mode, case", PAIRS, ids=PAIR_IDS)
def test_options_gradcheck(form: str, mode: str, case: str) -> None:
    """Autograd through both forms matches finite differences for every input, state, weight,
    gain and peephole; forward and reverse, with and without lengths (masks fixed)."""
    proj = 2 if (mode == "lstm" and case == "all" and form != "compiled") else 0
    args, options = layer_inputs(mode, case, proj=proj)
    leaves = option_leaves(options)
    present = [i for i, a in enumerate(args) if a is not None]
    names = list(leaves)
    for reverse, lengths in ((False, None), (True, torch.tensor([3, 1]))):

        def f(*ts):
            full = list(args)
            for i, t in zip(present, ts[: len(present)]):
                full[i] = t
            return _call(FORMS[form], mode, full, options, reverse, lengths, dict(zip(names, ts[len(present) :])))

        inputs = [args[i] for i in present] + list(leaves.values())
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7), (form, mode, case, reverse)


def _grads(form, mode, args, options, reverse, lengths):
    leaves = option_leaves(options)
    outs = _call(FORMS[form], mode, args, options, reverse, lengths, None)
    gen = torch.Generator().manual_seed(9)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
    inputs = [a for a in args if a is not None] + list(leaves.values())
    return [o.detach() for o in outs], torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode, case", PAIRS, ids=PAIR_IDS)
def test_reference_fused_and_compiled_agree(mode: str, case: str, dtype: torch.dtype) -> None:
    """Outputs, final states and every gradient at 1e-10 (float64) / 1e-5 (float32), bias on and
    off, both directions, lengths with a sequence of the full length and shorter ones; the fused
    and (where it was built) the compiled form against the reference.

    Float32 tolerances are relative to each tensor's scale (``f32_atol``): a weight gradient
    sums L*N products in a different order in each form (per gate vs one GEMM). With layer norm
    float32 is compared at 5e-5 of the scale: the normalisation divides by the spread of H = 5
    values, and both forms then land up to 1.2e-5 (of the scale) from the float64 result, in
    different directions (in float64 they agree to 4e-14: rounding, not a difference in the
    equations)."""
    for bias in (True, False):
        args, options = layer_inputs(mode, case, dtype, steps=6, batch=4, h_in=3, hidden=5, bias=bias, seed=3)
        for reverse, lengths in (
            (False, None),
            (True, None),
            (False, torch.tensor([6, 2, 4, 1])),
            (True, torch.tensor([3, 6, 1, 5])),
        ):
            ref_out, ref_g = _grads("reference", mode, args, options, reverse, lengths)
            for form in FORMS.keys() - {"reference"}:
                got_out, got_g = _grads(form, mode, args, options, reverse, lengths)
                where = f"{form}: {mode} {case} {dtype} bias={bias} reverse={reverse} lengths={lengths}"
                for a, b in zip(ref_out + list(ref_g), got_out + list(got_g), strict=True):
                    tol = TOL[dtype]
                    atol = f32_atol(a, options.layer_norm) if dtype == torch.float32 else tol
                    torch.testing.assert_close(b, a, atol=atol, rtol=tol, msg=lambda m: f"{where}: {m}")


def test_plain_options_change_nothing() -> None:
    """``CellOptions()`` (every field at its default) is not active; passing it computes exactly
    what ``options=None`` computes, in both forms."""
    assert not CellOptions().active and CellOptions().names() == []
    for mode in ("lstm", "gru", "rnn_tanh"):
        args, _ = layer_inputs(mode, "layer_norm", seed=1)
        for form in FORMS.values():
            a = form(mode, *args, True, torch.tensor([3, 2]))
            b = form(mode, *args, True, torch.tensor([3, 2]), CellOptions())
            for u, v in zip(a, b):
                assert (u is None and v is None) or torch.equal(u, v)


def _block_ln(v, gain, gates):
    """Per-gate-block layer norm written with F.layer_norm, for the one-step checks."""
    size = v.shape[-1] // gates
    return torch.cat([F.layer_norm(blk, (size,), eps=1e-5) for blk in v.split(size, -1)], -1) * gain


def test_lstm_step_with_every_option_matches_the_formulas() -> None:
    """One LSTM step with layer norm, peepholes, recurrent dropout, zoneout and hard_sigmoid
    gates, against the equations of rnnlab/nn/options.py written out here with torch ops."""
    args, opt = layer_inputs("lstm", "all", steps=1, batch=3, h_in=4, hidden=5, seed=7)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = args
    with torch.no_grad():
        out, h1, c1 = functional.fused_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, None, opt)
        ref = functional.reference_layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, None, opt)
        a = _block_ln(x[0] @ w_ih.t(), opt.ln_weight_ih, 4) + b_ih
        a = a + _block_ln((h0 * opt.recurrent_mask) @ w_hh.t(), opt.ln_weight_hh, 4) + b_hh
        a_i, a_f, a_g, a_o = a.chunk(4, 1)
        w_ci, w_cf, w_co = opt.weight_peephole.chunk(3)
        hs = lambda v: torch.clamp(v / 6 + 0.5, 0, 1)  # noqa: E731  hard sigmoid
        c_new = hs(a_f + w_cf * c0) * c0 + hs(a_i + w_ci * c0) * torch.tanh(a_g)
        h_new = hs(a_o + w_co * c_new) * torch.tanh(F.layer_norm(c_new, (5,), opt.ln_weight_c, opt.ln_bias_c, 1e-5))
        d_h, d_c = opt.zoneout_h[0], opt.zoneout_c[0]
        want_h = torch.where(d_h == 1, h0, h_new)
        want_c = torch.where(d_c == 1, c0, c_new)
    for got in ((out[0], h1, c1), ref):
        got = (got[0][0], got[1], got[2]) if got[0].dim() == 3 else got
        torch.testing.assert_close(got[0], want_h, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(got[1], want_h, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(got[2], want_c, atol=1e-12, rtol=1e-12)
    assert 0 < int(d_h.sum()) < d_h.numel()  # both branches of zoneout are exercised


def test_gru_and_rnn_steps_with_options_match_the_formulas() -> None:
    """One GRU step (layer norm, recurrent dropout, zoneout in eval: p h + (1-p) h~; relu
    candidate) and one RNN step (layer norm), written out here."""
    args, opt = layer_inputs("gru", "ln+rec+zone", steps=1, batch=3, h_in=4, hidden=5, seed=8)
    x, h0, _, w_ih, w_hh, b_ih, b_hh, _ = args
    opt = CellOptions(
        activation="relu",
        ln_weight_ih=opt.ln_weight_ih,
        ln_weight_hh=opt.ln_weight_hh,
        recurrent_mask=opt.recurrent_mask,
        zoneout_h=0.25,
    )
    with torch.no_grad():
        gx = _block_ln(x[0] @ w_ih.t(), opt.ln_weight_ih, 3) + b_ih
        gh = _block_ln((h0 * opt.recurrent_mask) @ w_hh.t(), opt.ln_weight_hh, 3) + b_hh
        r = torch.sigmoid(gx[:, :5] + gh[:, :5])
        z = torch.sigmoid(gx[:, 5:10] + gh[:, 5:10])
        n = torch.relu(gx[:, 10:] + r * gh[:, 10:])
        want = 0.25 * h0 + 0.75 * ((1 - z) * n + z * h0)
        for form in FORMS.values():
            out, h1, _ = form("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, False, None, opt)
            torch.testing.assert_close(h1, want, atol=1e-12, rtol=1e-12)
    args, opt = layer_inputs("rnn_tanh", "layer_norm", steps=1, batch=3, h_in=4, hidden=5, seed=9)
    x, h0, _, w_ih, w_hh, b_ih, b_hh, _ = args
    with torch.no_grad():
        want = torch.tanh(
            _block_ln(x[0] @ w_ih.t(), opt.ln_weight_ih, 1)
            + b_ih
            + _block_ln(h0 @ w_hh.t(), opt.ln_weight_hh, 1)
            + b_hh
        )
        for form in FORMS.values():
            _, h1, _ = form("rnn_tanh", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, False, None, opt)
            torch.testing.assert_close(h1, want, atol=1e-12, rtol=1e-12)


def test_zero_peepholes_and_all_ones_masks_are_the_plain_cell() -> None:
    """Peephole weights 0, a recurrent mask of ones and all-zero zoneout masks compute the
    plain LSTM (the options enter the equations where the docstring says, nowhere else)."""
    args, _ = layer_inputs("lstm", "peephole", steps=4, batch=2, seed=2)
    x, h0, c0 = args[:3]
    opt = CellOptions(
        weight_peephole=torch.zeros(9, dtype=torch.float64),
        recurrent_mask=torch.ones(2, 3, dtype=torch.float64),
        zoneout_h=torch.zeros(4, 2, 3, dtype=torch.float64),
        zoneout_c=torch.zeros(4, 2, 3, dtype=torch.float64),
    )
    with torch.no_grad():
        plain = functional.fused_layer("lstm", *args, False, None)
        for form in FORMS.values():
            for u, v in zip(plain, form("lstm", *args, False, None, opt)):
                torch.testing.assert_close(v, u, atol=1e-14, rtol=1e-14)
        ones = CellOptions(zoneout_h=torch.ones(4, 2, 3, dtype=torch.float64))  # every unit keeps h0
        out, h_n, _ = functional.fused_layer(
            "gru", x, h0, None, *layer_inputs("gru", "zoneout")[0][3:7], None, False, None, ones
        )
        assert torch.equal(h_n, h0) and torch.equal(out, h0.expand(4, 2, 3))


def test_cell_functions_take_options() -> None:
    """The cell functions (one step, zoneout masks (N, .)) agree with the layer functions' first step."""
    args, opt = layer_inputs("lstm", "all", steps=1, batch=2, seed=4)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = args
    step = opt.at_step(0)
    assert step.zoneout_h.shape == (2, 3)
    with torch.no_grad():
        _, h1, c1 = functional.reference_layer("lstm", *args, False, None, opt)
        h_ref, c_ref = functional.lstm_cell_reference(x[0], h0, c0, w_ih, w_hh, b_ih, b_hh, None, step)
        h_fus, c_fus = functional.cell_fused("lstm", x[0], h0, c0, w_ih, w_hh, b_ih, b_hh, None, step)
    torch.testing.assert_close(h_ref, h1, atol=0, rtol=0)
    torch.testing.assert_close(c_ref, c1, atol=0, rtol=0)
    torch.testing.assert_close(h_fus, h1, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(c_fus, c1, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "mode, kwargs, message",
    [
        ("gru", dict(weight_peephole=torch.zeros(9)), "gru: peephole weights are only defined for the LSTM"),
        (
            "rnn_tanh",
            dict(zoneout_c=0.5),
            r"rnn_tanh: zoneout_c \(the cell state's zoneout\) is only defined for the LSTM",
        ),
        (
            "rnn_relu",
            dict(gate_activation="hard_sigmoid"),
            "rnn_relu: gate_activation and activation are for lstm and gru",
        ),
        (
            "gru",
            dict(ln_weight_ih=torch.ones(9), ln_weight_hh=torch.ones(9), ln_weight_c=torch.ones(3)),
            r"gru: the cell-state layer norm \(ln_weight_c, ln_bias_c\) is only defined for the LSTM",
        ),
    ],
)
def test_options_the_mode_does_not_have(mode: str, kwargs: dict, message: str) -> None:
    args, _ = layer_inputs(mode, "layer_norm" if mode != "gru" else "zoneout")
    for form in FORMS.values():
        with pytest.raises(ValueError, match=message):
            form(mode, *args, False, None, CellOptions(**kwargs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(gate_activation="gelu"),
            "CellOptions: gate_activation must be one of 'sigmoid', 'hard_sigmoid', 'tanh', 'hard_tanh', 'relu', got 'gelu'",
        ),
        (dict(activation=None), "CellOptions: activation must be one of .*, got None"),
        (dict(ln_weight_ih=torch.ones(3)), "CellOptions: ln_weight_ih and ln_weight_hh are given together"),
        (dict(ln_weight_c=torch.ones(3)), r"CellOptions: ln_weight_c / ln_bias_c need layer norm"),
        (dict(zoneout_h=1.0), r"CellOptions: zoneout_h must be a probability in \[0, 1\), got 1.0"),
        (dict(zoneout_c=-0.5), r"CellOptions: zoneout_c must be a probability in \[0, 1\), got -0.5"),
    ],
)
def test_cell_options_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CellOptions(**kwargs)


def test_options_must_be_cell_options() -> None:
    args, _ = layer_inputs("gru", "zoneout")
    with pytest.raises(TypeError, match="options must be a rnnlab.nn.options.CellOptions or None, got dict"):
        functional.fused_layer("gru", *args, False, None, {"layer_norm": True})
