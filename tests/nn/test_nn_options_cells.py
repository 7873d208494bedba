"""Cell options on the cells (one step) and every bad option's error message, layers and cells."""

from __future__ import annotations

import warnings

import pytest
import torch
from options_helpers import randomize_option_parameters

import rnnlab.nn as rnn
from rnnlab.nn import functional
from rnnlab.nn.options import CellOptions, OptionFallbackWarning, SequenceMasks

CELL_CASES = {
    "LSTMCell": dict(
        layer_norm=True,
        recurrent_dropout=0.3,
        weight_drop=0.3,
        zoneout=(0.2, 0.4),
        peephole=True,
        gate_activation="hard_sigmoid",
    ),
    "GRUCell": dict(layer_norm=True, recurrent_dropout=0.3, weight_drop=0.3, zoneout=0.2, activation="hard_tanh"),
    "RNNCell": dict(layer_norm=True, recurrent_dropout=0.3, weight_drop=0.3, zoneout=0.2),
}
MODES = {"LSTMCell": "lstm", "GRUCell": "gru", "RNNCell": "rnn_tanh"}


def _cells(cls: str, dtype=torch.float64):
    torch.manual_seed(0)
    ref = getattr(rnn, cls)(3, 4, impl="reference", dtype=dtype, **CELL_CASES[cls])
    randomize_option_parameters(ref)
    fused = getattr(rnn, cls)(3, 4, impl="fused", dtype=dtype, **CELL_CASES[cls])
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("cls", list(CELL_CASES))
def test_cell_impls_agree_and_a_sequence_of_steps_is_the_layer(cls: str) -> None:
    """reference and fused cells agree (seeded masks, gradients too); stepping a cell over a
    sequence with ``masks=cell.draw_masks(N)`` is the layer with the same sequence masks (zoneout
    in eval, its expectation, so that the per-step draws do not differ)."""
    ref, fused = _cells(cls)
    is_lstm = cls == "LSTMCell"
    x = torch.randn(2, 3, dtype=torch.float64)
    state = (
        (torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
        if is_lstm
        else torch.randn(2, 4, dtype=torch.float64)
    )
    results = []
    for cell in (ref, fused):
        torch.manual_seed(3)
        out = cell(x, state)
        outs = out if is_lstm else (out,)
        grads = torch.autograd.grad(sum(o.sum() for o in outs), list(cell.parameters()))
        results.append((outs, grads))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    # a sequence: cell steps with shared masks == the reference layer with those masks
    masks = ref.draw_masks(2)  # in training: drawn
    assert masks.recurrent.shape == (2, 4) and masks.weight_hh.shape == ref.weight_hh.shape
    ref.eval()  # zoneout as its expectation; the given masks still apply
    xs = torch.randn(5, 2, 3, dtype=torch.float64)
    h = state
    with torch.no_grad():
        steps = []
        for t in range(5):
            h = ref(xs[t], h, masks=masks)
            steps.append(h[0] if is_lstm else h)
        p_h, p_c = ref.options["zoneout"]  # (p_h, p_c), p_c = 0 but for LSTM
        opt = CellOptions(
            gate_activation=ref.gate_activation,
            activation=ref.activation,
            ln_weight_ih=ref.ln_weight_ih,
            ln_weight_hh=ref.ln_weight_hh,
            ln_weight_c=getattr(ref, "ln_weight_c", None),
            ln_bias_c=getattr(ref, "ln_bias_c", None),
            weight_peephole=getattr(ref, "weight_peephole", None),
            recurrent_mask=masks.recurrent,
            zoneout_h=p_h,
            zoneout_c=p_c,
        )
        w_hh = ref.weight_hh * masks.weight_hh
        c0 = state[1] if is_lstm else None
        h0 = state[0] if is_lstm else state
        out, h_n, _ = functional.reference_layer(
            MODES[cls], xs, h0, c0, ref.weight_ih, w_hh, ref.bias_ih, ref.bias_hh, None, False, None, opt
        )
    torch.testing.assert_close(torch.stack(steps), out, atol=1e-14, rtol=1e-14)


def test_cell_masks_per_call_eval_and_unbatched() -> None:
    """Without ``masks`` a cell in training draws fresh masks per call; in eval it is
    deterministic and draw_masks gives none; unbatched input is a batch of one."""
    ref, _ = _cells("GRUCell")
    x, h = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.manual_seed(1)
    a = ref(x, h)
    torch.manual_seed(1)
    b = ref(x.unsqueeze(0), h.unsqueeze(0))
    assert a.shape == (4,) and torch.equal(a, b.squeeze(0))
    assert not torch.equal(ref(x, h), ref(x, h))  # a new draw per call
    ref.eval()
    assert torch.equal(ref(x, h), ref(x, h))
    masks = ref.draw_masks(5)
    assert masks.recurrent is None and masks.weight_hh is None


def test_cell_mask_errors() -> None:
    cell = rnn.LSTMCell(3, 4, recurrent_dropout=0.5)
    with pytest.raises(TypeError, match=r"LSTMCell: masks must come from LSTMCell.draw_masks\(batch_size\), got dict"):
        cell(torch.randn(2, 3), masks={})
    with pytest.raises(ValueError, match="LSTMCell: masks were drawn for a batch of 5, got input with batch 2"):
        cell(torch.randn(2, 3), masks=cell.draw_masks(5))
    assert isinstance(cell.draw_masks(2), SequenceMasks)


def test_cells_without_options_are_unchanged() -> None:
    """Options at their defaults: torch.nn's numbers bit for bit as before (fused path)."""
    for cls in ("LSTMCell", "GRUCell", "RNNCell"):
        torch.manual_seed(0)
        ref = getattr(torch.nn, cls)(3, 4)
        ours = getattr(rnn, cls).from_torch(ref, impl="fused", layer_norm=False, zoneout=0.0)
        plain = getattr(rnn, cls).from_torch(ref, impl="fused")
        x = torch.randn(2, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptionFallbackWarning)
            a, b = ours(x), plain(x)
        for u, v in zip(a if cls == "LSTMCell" else (a,), b if cls == "LSTMCell" else (b,)):
            assert torch.equal(u, v)
        assert list(ours.state_dict()) == list(ref.state_dict())


# ----------------------------------------------------------------------------------------
# Bad options: the error names the argument, what was expected and what was found
# ----------------------------------------------------------------------------------------

PROB = r"must be a probability in \[0, 1\), got "


@pytest.mark.parametrize(
    "cls, kwargs, error, message",
    [
        ("LSTM", dict(recurrent_dropout=1.0), ValueError, "LSTM: recurrent_dropout " + PROB + "1.0"),
        ("GRU", dict(recurrent_dropout=-0.1), ValueError, "GRU: recurrent_dropout " + PROB + "-0.1"),
        ("RNN", dict(weight_drop=1), ValueError, "RNN: weight_drop " + PROB + "1"),
        ("LSTM", dict(weight_drop="0.3"), ValueError, "LSTM: weight_drop " + PROB + "'0.3'"),
        ("GRU", dict(zoneout=True), ValueError, "GRU: zoneout " + PROB + "True"),
        ("LSTM", dict(zoneout=(0.1, 1.5)), ValueError, r"LSTM: zoneout\[1\] \(c\) " + PROB + "1.5"),
        (
            "LSTM",
            dict(zoneout=(0.1, 0.2, 0.3)),
            ValueError,
            r"LSTM: zoneout must be a probability or a pair \(h, c\) of probabilities, got \(0.1, 0.2, 0.3\)",
        ),
        (
            "GRU",
            dict(zoneout=(0.1, 0.2)),
            ValueError,
            r"GRU: zoneout must be a probability in \[0, 1\) \(a pair \(h, c\) is for LSTM, which has a cell state\), got \(0.1, 0.2\)",
        ),
        (
            "LSTM",
            dict(gate_activation="gelu"),
            ValueError,
            "LSTM: gate_activation must be one of 'sigmoid', 'hard_sigmoid', 'tanh', 'hard_tanh', 'relu', got 'gelu'",
        ),
        (
            "GRU",
            dict(activation="Tanh"),
            ValueError,
            "GRU: activation must be one of 'sigmoid', 'hard_sigmoid', 'tanh', 'hard_tanh', 'relu', got 'Tanh'",
        ),
        (
            "GRU",
            dict(peephole=True),
            ValueError,
            r"GRU: peephole connections are only defined for LSTM \(the gates look at the cell state, which GRU has not\), got peephole=True",
        ),
        ("RNN", dict(peephole=True), ValueError, "RNN: peephole connections are only defined for LSTM"),
        (
            "RNN",
            dict(gate_activation="hard_sigmoid"),
            ValueError,
            r"RNN: gate_activation is only for LSTM and GRU \(an RNN has no gates; its nonlinearity is set by nonlinearity='tanh' or 'relu'\), got gate_activation='hard_sigmoid'",
        ),
        ("RNN", dict(activation="relu"), ValueError, "RNN: activation is only for LSTM and GRU"),
        ("LSTM", dict(layer_norm=1), TypeError, "LSTM: layer_norm should be of type bool, got: int"),
        ("LSTM", dict(peephole="yes"), TypeError, "LSTM: peephole should be of type bool, got: str"),
        (
            "GRUCell",
            dict(peephole=True),
            ValueError,
            "GRUCell: peephole connections are only defined for LSTM .* which GRU has not",
        ),
        ("RNNCell", dict(activation="relu"), ValueError, "RNNCell: activation is only for LSTM and GRU"),
        ("LSTMCell", dict(zoneout=1.0), ValueError, "LSTMCell: zoneout " + PROB + "1.0"),
        ("GRUCell", dict(layer_norm="true"), TypeError, "GRUCell: layer_norm should be of type bool, got: str"),
        ("LSTM", dict(recurrent_dropout=float("nan")), ValueError, "LSTM: recurrent_dropout " + PROB + "nan"),
    ],
)
def test_bad_options(cls: str, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        getattr(rnn, cls)(3, 4, **kwargs)


def test_default_values_of_foreign_options_are_accepted() -> None:
    """One set of keywords builds any class: an option a class lacks is fine at its default."""
    gru = rnn.GRU(3, 4, peephole=False)
    rnn_ = rnn.RNN(3, 4, gate_activation="sigmoid", activation="tanh", peephole=False)
    assert not gru.peephole and rnn_.gate_activation == "sigmoid"
    with pytest.raises(TypeError, match=r"GRU.__init__\(\) got unexpected keyword argument\(s\): layernorm"):
        rnn.GRU(3, 4, layernorm=True)


def test_every_option_combines_with_proj_size() -> None:
    """No option is refused with proj_size: the projection acts on h~, recurrent dropout and
    zoneout of h on the P projected units (shapes of the masks and states follow)."""
    torch.manual_seed(0)
    lstm = rnn.LSTM(
        3,
        6,
        proj_size=2,
        num_layers=2,
        layer_norm=True,
        recurrent_dropout=0.3,
        zoneout=(0.2, 0.3),
        weight_drop=0.3,
        peephole=True,
        impl="reference",
    )
    out, (h, c) = lstm(torch.randn(5, 4, 3), lengths=torch.tensor([5, 1, 3, 4]))
    assert out.shape == (5, 4, 2) and h.shape == (2, 4, 2) and c.shape == (2, 4, 6)
