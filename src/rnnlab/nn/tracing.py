r"""Trace mode: run a recurrent layer gate by gate and keep every step's gates and states.

    >>> from rnnlab.nn import LSTM, trace
    >>> lstm = LSTM(8, 16, bidirectional=True)
    >>> with trace(lstm) as t:
    ...     out, _ = lstm(x)                       # x (L, N, 8)
    >>> t.get(0, direction=1).gates["f"].shape     # the reverse direction's forget gate
    torch.Size([L, N, 16])

Inside ``with trace(module)`` the layer computes every (layer, direction) with the reference
cells of :mod:`rnnlab.nn.functional` (the equations one gate at a time), whatever its
``impl``, with the layer's cell options (``rnnlab.nn.options``), and the cells hand over what
they computed: LSTM ``i, f, g, o``; GRU ``r, z, n`` (the values used: after layer norm and
peepholes, through the layer's gate and candidate activations); and the new states ``h`` (and
``c``), after zoneout. In training, the recurrent-dropout, zoneout and weight-drop masks are the
ones drawn for that forward, as without tracing. Outputs equal the other implementations' (same
equations), so the trace explains exactly the numbers the model produces. Outside the
context nothing changes: the layer reads one class attribute (``tracer``, None) per forward
to choose its layer function, and the fast paths hold no per-step check.

Symbols: ``L`` steps, ``N`` batch, ``H`` hidden size, ``H_out`` output size (``H`` or the
LSTM projection size). Traced tensors are in time order ``t = 0 .. L-1`` for both directions
and keep their autograd graph (gradients with respect to a gate are allowed). At padded steps
(``lengths`` given) the recorded values are what the cell computed there, which the layer then
discards; ``valid`` marks the real steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import functional
from .options import CellOptions
from .rnn import RNNBase

__all__ = ["GATE_NAMES", "SIGMOID_GATES", "LayerTrace", "Trace", "trace"]

#: The gates each mode's cell records, in torch's order.
GATE_NAMES: dict[str, tuple[str, ...]] = {
    "lstm": ("i", "f", "g", "o"),
    "gru": ("r", "z", "n"),
    "rnn_tanh": (),
    "rnn_relu": (),
}
#: Gates that are sigmoids (values in (0, 1)); ``g`` and ``n`` are tanh (values in (-1, 1)).
SIGMOID_GATES = frozenset({"i", "f", "o", "r", "z"})


@dataclass
class LayerTrace:
    """One (layer, direction) of one forward pass.

    ``gates[name]`` (L, N, H); ``h`` (L, N, H_out) and ``c`` (L, N, H) or None: the states
    after step t; ``valid`` (L, N) bool: True at each sequence's real steps.
    """

    layer: int
    direction: int  # 0 forward, 1 reverse
    mode: str
    gates: dict[str, Tensor]
    h: Tensor
    c: Tensor | None
    valid: Tensor

    @property
    def name(self) -> str:
        """``"layer 0"``, ``"layer 0 reverse"``..."""
        return f"layer {self.layer}" + (" reverse" if self.direction else "")


@dataclass
class Trace:
    """What a traced layer recorded: ``forwards[k]`` lists the (layer, direction) traces of the
    k-th forward pass inside the context, in the order they ran (layer 0 forward, layer 0
    reverse, layer 1 forward...); ``layers`` is the last forward's."""

    module: RNNBase
    forwards: list[list[LayerTrace]] = field(default_factory=list)

    @property
    def layers(self) -> list[LayerTrace]:
        if not self.forwards:
            raise RuntimeError("trace: nothing recorded yet; call the traced layer inside the `with trace(...)` block")
        return self.forwards[-1]

    def get(self, layer: int, direction: int = 0) -> LayerTrace:
        """The last forward's trace of ``layer`` (0-based) and ``direction`` (0 forward, 1 reverse)."""
        for t in self.layers:
            if t.layer == layer and t.direction == direction:
                return t
        have = ", ".join(f"({t.layer}, {t.direction})" for t in self.layers)
        raise KeyError(f"trace: no (layer, direction) = ({layer}, {direction}); recorded: {have}")


class _Recorder:
    """The traced layer's layer function: the reference layer, recording its steps into ``trace``."""

    def __init__(self, module: RNNBase, result: Trace) -> None:
        self.directions = 2 if module.bidirectional else 1
        self.per_forward = module.num_layers * self.directions
        self.result = result
        self.calls = 0

    def layer_function(
        self,
        mode: str,
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        w_hr: Tensor | None,
        reverse: bool,
        lengths: Tensor | None,
        options: CellOptions | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Same signature and results as ``functional.reference_layer``; records one LayerTrace."""
        steps: list[dict[str, Tensor]] = []
        result = functional.reference_layer(
            mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths, options, trace=steps
        )
        if reverse:
            steps.reverse()  # recorded from t = L-1 down to 0
        k = self.calls % self.per_forward
        self.calls += 1
        if k == 0:
            self.result.forwards.append([])
        length = x.shape[0]
        if lengths is None:
            valid = torch.ones(length, x.shape[1], dtype=torch.bool, device=x.device)
        else:
            valid = torch.arange(length, device=x.device)[:, None] < lengths.to(x.device)[None, :]  # (L, N)
        stack = lambda key: torch.stack([s[key] for s in steps])  # noqa: E731  (L, N, *)
        self.result.forwards[-1].append(
            LayerTrace(
                layer=k // self.directions,
                direction=k % self.directions,
                mode=mode,
                gates={name: stack(name) for name in GATE_NAMES[mode]},
                h=stack("h"),
                c=stack("c") if mode == "lstm" else None,
                valid=valid,
            )
        )
        return result


@contextmanager
def trace(module: nn.Module) -> Iterator[Trace]:
    """Trace the one rnnlab.nn recurrent layer (``RNN``, ``LSTM``, ``GRU``) in ``module``.

    ``module`` is the layer itself or a model holding exactly one. A ``torch.nn`` layer is
    traced through a copy: ``rnnlab.nn.LSTM.from_torch(layer)`` (same weights, same numbers).
    """
    layers = [m for m in module.modules() if isinstance(m, RNNBase)]
    if len(layers) != 1:
        found = "none" if not layers else f"{len(layers)} ({', '.join(type(m).__name__ for m in layers)})"
        raise TypeError(
            f"trace: expected a module holding exactly one rnnlab.nn recurrent layer (RNN, LSTM, GRU), found {found}; "
            "a torch.nn layer is traced through rnnlab.nn.<Layer>.from_torch(layer)"
        )
    layer = layers[0]
    if layer.tracer is not None:
        raise RuntimeError(f"trace: this {type(layer).__name__} is already being traced")
    result = Trace(layer)
    layer.tracer = _Recorder(layer, result)
    try:
        yield result
    finally:
        del layer.tracer  # back to the class attribute (None)
