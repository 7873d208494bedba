"""Trace mode (rnnlab.nn.trace): traced gates and states equal the equations, outputs equal the fast path."""

from __future__ import annotations

import pytest
import torch
from nn_helpers import KINDS
from torch import Tensor

import rnnlab.nn as rnn
from rnnlab.nn import trace
from rnnlab.nn.tracing import GATE_NAMES


def _equations(module: rnn.RNNBase, x: Tensor, lengths: list[int]) -> dict[tuple[int, int, int], dict[str, Tensor]]:
    """Every gate and state of every (sequence, layer, direction), recomputed from the equations.

    Each sequence k runs alone on its first lengths[k] steps (as packing would), written out
    here independently of rnnlab.nn.functional: key (k, layer, direction) -> name -> (len_k, *).
    """
    sig, tanh = torch.sigmoid, torch.tanh
    H = module.hidden_size
    D = 2 if module.bidirectional else 1
    result = {}
    for k, n in enumerate(lengths):
        inp = x[:n, k]  # (n, H_in)
        for layer in range(module.num_layers):
            outs = []
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
                b_ih, b_hh = getattr(module, "bias_ih" + sfx), getattr(module, "bias_hh" + sfx)
                w_hr = getattr(module, "weight_hr" + sfx, None)
                h = torch.zeros(module.proj_size or H, dtype=x.dtype)
                c = torch.zeros(H, dtype=x.dtype)
                rec: dict[str, list] = {}
                order = range(n - 1, -1, -1) if d else range(n)
                for t in order:
                    a = w_ih @ inp[t] + b_ih  # input part of every gate (G*H,)
                    b = w_hh @ h + b_hh  # recurrent part
                    if module.mode == "lstm":
                        vals = {
                            "i": sig(a[:H] + b[:H]),
                            "f": sig(a[H : 2 * H] + b[H : 2 * H]),
                            "g": tanh(a[2 * H : 3 * H] + b[2 * H : 3 * H]),
                            "o": sig(a[3 * H :] + b[3 * H :]),
                        }
                        c = vals["f"] * c + vals["i"] * vals["g"]
                        h = vals["o"] * tanh(c)
                        if w_hr is not None:
                            h = w_hr @ h
                        vals["c"] = c
                    elif module.mode == "gru":
                        r = sig(a[:H] + b[:H])
                        z = sig(a[H : 2 * H] + b[H : 2 * H])
                        nn_ = tanh(a[2 * H :] + r * b[2 * H :])
                        h = (1 - z) * nn_ + z * h
                        vals = {"r": r, "z": z, "n": nn_}
                    else:
                        pre = a + b
                        h = tanh(pre) if module.mode == "rnn_tanh" else torch.relu(pre)
                        vals = {}
                    vals["h"] = h
                    for key, v in vals.items():
                        rec.setdefault(key, [None] * n)[t] = v
                result[(k, layer, d)] = {key: torch.stack(v) for key, v in rec.items()}
                outs.append(result[(k, layer, d)]["h"])
            inp = torch.cat(outs, dim=1)
    return result


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_traced_gates_equal_the_equations_with_padding(kind, bidirectional, impl):
    torch.manual_seed(0)
    name, extra = KINDS[kind]
    module = getattr(rnn, name)(
        3, 5, num_layers=2, bidirectional=bidirectional, impl=impl, dtype=torch.float64, **extra
    )
    lengths = [6, 2, 4]
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    for k, n in enumerate(lengths):
        x[n:, k] = 0.0
    lens = torch.tensor(lengths)
    plain_out, plain_h = module(x, lengths=lens)
    with trace(module) as t:
        out, hidden = module(x, lengths=lens)
    torch.testing.assert_close(out, plain_out, rtol=0, atol=1e-12)  # traced numbers are the model's numbers
    want = _equations(module, x, lengths)
    D = 2 if bidirectional else 1
    assert [(lt.layer, lt.direction) for lt in t.layers] == [(layer, d) for layer in range(2) for d in range(D)]
    for lt in t.layers:
        assert lt.mode == module.mode
        assert set(lt.gates) == set(GATE_NAMES[module.mode])
        assert lt.valid.tolist() == [[s < n for n in lengths] for s in range(6)]
        for k, n in enumerate(lengths):
            ref = want[(k, lt.layer, lt.direction)]
            for gate, values in lt.gates.items():
                torch.testing.assert_close(
                    values[:n, k], ref[gate], rtol=0, atol=1e-12, msg=f"{lt.name} {gate} seq {k}"
                )
            torch.testing.assert_close(lt.h[:n, k], ref["h"], rtol=0, atol=1e-12)
            if module.mode == "lstm":
                torch.testing.assert_close(lt.c[:n, k], ref["c"], rtol=0, atol=1e-12)
            else:
                assert lt.c is None
    # the last layer's traced states are the layer's outputs at real steps
    last = [lt for lt in t.layers if lt.layer == 1]
    traced_out = torch.cat([lt.h * lt.valid[..., None] for lt in last], dim=2)
    torch.testing.assert_close(traced_out, out, rtol=0, atol=0)


def test_sigmoid_gates_lie_in_unit_interval_and_lstm_cell_update_holds():
    torch.manual_seed(1)
    lstm = rnn.LSTM(4, 8)
    x = torch.randn(7, 2, 4)
    with torch.no_grad(), trace(lstm) as t:
        lstm(x)
    lt = t.get(0)
    for g in "ifo":
        assert 0 < float(lt.gates[g].min()) and float(lt.gates[g].max()) < 1
    c_prev = torch.cat([torch.zeros(1, 2, 8), lt.c[:-1]])
    torch.testing.assert_close(lt.c, lt.gates["f"] * c_prev + lt.gates["i"] * lt.gates["g"])


def test_trace_records_every_forward_and_leaves_no_tracer_behind():
    gru = rnn.GRU(3, 4, impl="fast")
    x = torch.randn(5, 2, 3)
    with trace(gru) as t:
        gru(x)
        gru(x[:3])
    assert [len(f) for f in t.forwards] == [1, 1]
    assert t.layers[0].gates["z"].shape == (3, 2, 4)
    assert "tracer" not in vars(gru) and gru.tracer is None
    with pytest.raises(ValueError), trace(gru):
        raise ValueError("inside")
    assert gru.tracer is None  # removed on errors too


def test_trace_gradients_flow_through_the_recorded_gates():
    lstm = rnn.LSTM(2, 3)
    x = torch.randn(4, 1, 2, requires_grad=True)
    with trace(lstm) as t:
        out, _ = lstm(x)
    (grad,) = torch.autograd.grad(t.get(0).gates["f"][-1].sum(), x)
    assert float(grad[-1].abs().sum()) > 0 and float(grad[:3].abs().sum()) > 0


def test_trace_refuses_what_it_cannot_trace():
    with pytest.raises(TypeError, match="exactly one rnnlab.nn recurrent layer.*found none.*from_torch"):
        with trace(torch.nn.LSTM(2, 3)):
            pass
    both = torch.nn.Sequential(rnn.GRU(2, 2), rnn.GRU(2, 2))
    with pytest.raises(TypeError, match=r"found 2 \(GRU, GRU\)"):
        with trace(both):
            pass
    gru = rnn.GRU(2, 2)
    with trace(gru), pytest.raises(RuntimeError, match="already being traced"):
        with trace(gru):
            pass
    with trace(gru) as t, pytest.raises(RuntimeError, match="nothing recorded yet"):
        t.layers  # noqa: B018
    with trace(gru) as t:
        gru(torch.randn(2, 1, 2))
    with pytest.raises(KeyError, match=r"no \(layer, direction\) = \(0, 1\); recorded: \(0, 0\)"):
        t.get(0, 1)


# ----------------------------------------------------------------------------------------------
# Trace mode with cell options: the gates the cell used (layer norm, peepholes, other
# nonlinearities, the dropout and zoneout masks drawn for that forward)

_ACT = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hard_sigmoid": lambda v: (v / 6 + 0.5).clamp(0, 1),
    "hard_tanh": lambda v: v.clamp(-1, 1),
}


def _ln(v: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    """Layer norm over the last dimension, eps 1e-5, biased variance."""
    mean = v.mean(-1, keepdim=True)
    y = (v - mean) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-5) * gain
    return y if bias is None else y + bias


def _option_equations(module: rnn.RNNBase, x: Tensor, calls: list[tuple[Tensor, object]]) -> list[dict[str, Tensor]]:
    """Per (layer, direction), in the order the layer ran them: every gate and state, from the equations of
    rnnlab/nn/options.py written out here on the whole batch. ``calls``: the (w_hh, CellOptions) each
    layer function received (the weight-dropped W_hh and the masks drawn for this forward)."""
    H, D = module.hidden_size, 2 if module.bidirectional else 1
    sg, phi = _ACT[module.gate_activation], _ACT[module.activation]
    gates = GATE_NAMES[module.mode]
    results, inp = [], x
    for layer in range(module.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = lambda name: getattr(module, name + sfx, None)  # noqa: E731
            w_hh, opt = calls[layer * D + d]
            m = 1.0 if opt.recurrent_mask is None else opt.recurrent_mask
            at = lambda z, t: z[t] if isinstance(z, Tensor) else z  # noqa: E731
            h = torch.zeros(x.shape[1], H, dtype=x.dtype)
            c = torch.zeros(x.shape[1], H, dtype=x.dtype)
            rec: dict[str, list] = {}
            order = range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])
            for t in order:
                ax = (inp[t] @ p("weight_ih").t()).split(H, -1)
                ah = ((h * m) @ w_hh.t()).split(H, -1)
                ax = [_ln(v, g) for v, g in zip(ax, p("ln_weight_ih").split(H))] if module.layer_norm else ax
                ah = [_ln(v, g) for v, g in zip(ah, p("ln_weight_hh").split(H))] if module.layer_norm else ah
                a = {k: ax[j] + p("bias_ih")[j * H : (j + 1) * H] for j, k in enumerate(gates)}
                b = {k: ah[j] + p("bias_hh")[j * H : (j + 1) * H] for j, k in enumerate(gates)}
                if module.mode == "lstm":
                    w_ci, w_cf, w_co = p("weight_peephole").split(H) if module.peephole else (0, 0, 0)
                    vals = {"i": sg(a["i"] + b["i"] + w_ci * c), "f": sg(a["f"] + b["f"] + w_cf * c)}
                    vals["g"] = phi(a["g"] + b["g"])
                    c_new = vals["f"] * c + vals["i"] * vals["g"]
                    vals["o"] = sg(a["o"] + b["o"] + w_co * c_new)
                    c_out = _ln(c_new, p("ln_weight_c"), p("ln_bias_c")) if module.layer_norm else c_new
                    h_new = vals["o"] * phi(c_out)
                    dc = at(opt.zoneout_c, t)
                    c = dc * c + (1 - dc) * c_new
                    vals["c"] = c
                else:  # gru
                    vals = {"r": sg(a["r"] + b["r"]), "z": sg(a["z"] + b["z"])}
                    vals["n"] = phi(a["n"] + vals["r"] * b["n"])
                    h_new = (1 - vals["z"]) * vals["n"] + vals["z"] * h
                dh = at(opt.zoneout_h, t)
                h = dh * h + (1 - dh) * h_new
                vals["h"] = h
                for key, v in vals.items():
                    rec.setdefault(key, [None] * x.shape[0])[t] = v
            results.append({key: torch.stack(v) for key, v in rec.items()})
            outs.append(results[-1]["h"])
        inp = torch.cat(outs, dim=2)
    return results


def _randomise_option_parameters(module: rnn.RNNBase) -> None:
    """Layer-norm gains and biases away from their initial 1 and 0, so that they count."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_"):
                p.uniform_(0.5, 1.5)


OPTION_LAYERS = {
    "lstm_ln_peephole": ("LSTM", {"layer_norm": True, "peephole": True, "gate_activation": "hard_sigmoid"}),
    "lstm_ln_zoneout": ("LSTM", {"layer_norm": True, "zoneout": (0.2, 0.3), "activation": "hard_tanh"}),
    "gru_ln": ("GRU", {"layer_norm": True, "activation": "hard_tanh", "zoneout": 0.25}),
    "lstm_masks": ("LSTM", {"layer_norm": True, "peephole": True, "recurrent_dropout": 0.3, "zoneout": 0.4}),
    "gru_masks": ("GRU", {"layer_norm": True, "recurrent_dropout": 0.3, "zoneout": 0.4, "weight_drop": 0.3}),
}


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("case", list(OPTION_LAYERS))
def test_traced_option_layers_record_the_gates_they_used(case, training, monkeypatch):
    torch.manual_seed(4)
    name, options = OPTION_LAYERS[case]
    module = getattr(rnn, name)(3, 5, num_layers=2, bidirectional=True, impl="fused", dtype=torch.float64, **options)
    _randomise_option_parameters(module)
    module.train(training)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(5)
    plain_out, plain_hidden = module(x)
    calls = []
    original = rnn.functional.reference_layer

    def capture(*args, **kwargs):  # the (w_hh, options) the traced layer function is handed
        calls.append((args[5], args[11] if len(args) > 11 else kwargs.get("options")))
        return original(*args, **kwargs)

    monkeypatch.setattr(rnn.functional, "reference_layer", capture)
    torch.manual_seed(5)  # the same masks as the untraced forward
    with trace(module) as t:
        out, hidden = module(x)
    torch.testing.assert_close(out, plain_out, rtol=0, atol=1e-12)  # traced numbers are the model's numbers
    torch.testing.assert_close(hidden, plain_hidden, rtol=0, atol=1e-12)
    assert len(calls) == 4 and all(opt is not None for _, opt in calls)
    if training:  # masks were drawn: zoneout keep-masks (0/1 per step and unit), recurrent dropout
        assert all(isinstance(opt.zoneout_h, Tensor) for _, opt in calls) == ("zoneout" in options)
        assert all(opt.recurrent_mask is not None for _, opt in calls) == ("recurrent_dropout" in options)
    want = _option_equations(module, x, calls)
    for lt, ref in zip(t.layers, want):
        assert set(lt.gates) == set(GATE_NAMES[module.mode])
        for gate, values in lt.gates.items():
            torch.testing.assert_close(values, ref[gate], rtol=0, atol=1e-12, msg=f"{lt.name} {gate}")
        torch.testing.assert_close(lt.h, ref["h"], rtol=0, atol=1e-12)
        if module.mode == "lstm":
            torch.testing.assert_close(lt.c, ref["c"], rtol=0, atol=1e-12)
