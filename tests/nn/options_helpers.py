"""Shared helpers for the cell-option tests: option sets at the layer-function level and per module."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnlab.nn.functional import GATES
from rnnlab.nn.options import CellOptions

#: Option sets for the layer functions: name -> (modes it applies to, CellOptions keywords or
#: the markers "ln", "rec", "zone", "zone_eval", "peep" filled in by ``layer_options``).
CASES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "layer_norm": (("lstm", "gru", "rnn_tanh"), {"ln": True}),
    "recurrent_dropout": (("lstm", "gru", "rnn_relu"), {"rec": True}),
    "zoneout": (("lstm", "gru", "rnn_tanh"), {"zone": True}),
    "zoneout_eval": (("lstm", "gru", "rnn_tanh"), {"zone_eval": True}),
    "peephole": (("lstm",), {"peep": True}),
    "hard_sigmoid": (("lstm", "gru"), {"gate_activation": "hard_sigmoid"}),
    "hard_tanh": (("lstm", "gru"), {"activation": "hard_tanh"}),
    "relu_tanh": (("lstm", "gru"), {"gate_activation": "tanh", "activation": "relu"}),
    "ln+rec+zone": (("lstm", "gru", "rnn_tanh"), {"ln": True, "rec": True, "zone": True}),
    "all": (("lstm",), {"ln": True, "rec": True, "zone": True, "peep": True, "gate_activation": "hard_sigmoid"}),
}

#: (mode, case) pairs, with ids.
PAIRS = [(mode, case) for case, (modes, _) in CASES.items() for mode in modes]
PAIR_IDS = [f"{mode}-{case}" for mode, case in PAIRS]


def layer_inputs(
    mode: str,
    case: str,
    dtype: torch.dtype = torch.float64,
    *,
    steps: int = 3,
    batch: int = 2,
    h_in: int = 2,
    hidden: int = 3,
    proj: int = 0,
    bias: bool = True,
    seed: int = 0,
) -> tuple[list[Tensor | None], CellOptions]:
    """Random layer arguments ``[x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr]`` (leaves requiring
    grad) and the case's CellOptions with fixed masks (differentiable gains and peepholes)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
        return t.to(dtype).requires_grad_(True)

    g = GATES[mode] * hidden
    h_out = proj or hidden
    x = rand(steps, batch, h_in)
    h0 = rand(batch, h_out)
    c0 = rand(batch, hidden) if mode == "lstm" else None
    w_ih, w_hh = rand(g, h_in, scale=0.6), rand(g, h_out, scale=0.6)
    b_ih, b_hh = (rand(g, scale=0.3), rand(g, scale=0.3)) if bias else (None, None)
    w_hr = rand(h_out, hidden) if proj else None
    spec = dict(CASES[case][1])
    kw: dict[str, Any] = {k: spec.pop(k) for k in ("gate_activation", "activation") if k in spec}
    if spec.pop("ln", False):
        kw["ln_weight_ih"] = rand(g, scale=0.2, shift=1.0)
        kw["ln_weight_hh"] = rand(g, scale=0.2, shift=1.0)
        if mode == "lstm":
            kw["ln_weight_c"] = rand(hidden, scale=0.2, shift=1.0)
            kw["ln_bias_c"] = rand(hidden, scale=0.2) if bias else None
    if spec.pop("rec", False):
        keep = torch.rand(batch, h_out, generator=gen) >= 0.3
        kw["recurrent_mask"] = (keep.to(dtype) / 0.7).to(dtype)
    if spec.pop("zone", False):
        kw["zoneout_h"] = (torch.rand(steps, batch, h_out, generator=gen) < 0.4).to(dtype)
        if mode == "lstm":
            kw["zoneout_c"] = (torch.rand(steps, batch, hidden, generator=gen) < 0.4).to(dtype)
    if spec.pop("zone_eval", False):
        kw["zoneout_h"] = 0.3
        if mode == "lstm":
            kw["zoneout_c"] = 0.6
    if spec.pop("peep", False):
        kw["weight_peephole"] = rand(3 * hidden, scale=0.5)
    assert not spec, spec
    return [x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr], CellOptions(**kw)


def f32_atol(expected: Tensor, layer_norm: bool) -> float:
    """Absolute float32 tolerance: 1e-5 (5e-5 with layer norm) times the tensor's scale
    ``max(1, max |expected|)`` (see test_reference_and_fused_agree for why)."""
    return (5e-5 if layer_norm else 1e-5) * max(1.0, expected.abs().max().item())


def option_leaves(options: CellOptions) -> dict[str, Tensor]:
    """The differentiable tensors of ``options`` (gains, biases, peepholes), by field name."""
    names = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c", "weight_peephole")
    return {n: getattr(options, n) for n in names if getattr(options, n) is not None}


#: Module-level option sets per class: class name -> {case: constructor keywords}.
MODULE_CASES: dict[str, dict[str, dict[str, Any]]] = {
    "LSTM": {
        "layer_norm": dict(layer_norm=True),
        "recurrent_dropout": dict(recurrent_dropout=0.3),
        "zoneout": dict(zoneout=(0.3, 0.5)),
        "weight_drop": dict(weight_drop=0.4),
        "peephole": dict(peephole=True),
        "activations": dict(gate_activation="hard_sigmoid", activation="hard_tanh"),
        "combined": dict(layer_norm=True, recurrent_dropout=0.2, weight_drop=0.3, zoneout=0.2, peephole=True),
    },
    "GRU": {
        "layer_norm": dict(layer_norm=True),
        "recurrent_dropout": dict(recurrent_dropout=0.3),
        "zoneout": dict(zoneout=0.3),
        "weight_drop": dict(weight_drop=0.4),
        "activations": dict(gate_activation="hard_sigmoid", activation="relu"),
        "combined": dict(layer_norm=True, recurrent_dropout=0.2, weight_drop=0.3, zoneout=0.2),
    },
    "RNN": {
        "layer_norm": dict(layer_norm=True),
        "recurrent_dropout": dict(recurrent_dropout=0.3),
        "zoneout": dict(zoneout=0.3),
        "weight_drop": dict(weight_drop=0.4),
        "combined": dict(layer_norm=True, recurrent_dropout=0.2, weight_drop=0.3, zoneout=0.2),
    },
}
MODULE_PAIRS = [(cls, case) for cls, cases in MODULE_CASES.items() for case in cases]
MODULE_IDS = [f"{cls}-{case}" for cls, case in MODULE_PAIRS]


def randomize_option_parameters(module: torch.nn.Module, seed: int = 5) -> None:
    """Move layer-norm gains/biases and peepholes away from their initial 1 / 0 (so that the
    tests see them), deterministically."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(("ln_", "weight_peephole")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
