"""Recurrent layers written from the equations, exact drop-ins for ``torch.nn``.

    >>> from rnnlab.nn import LSTM
    >>> lstm = LSTM(64, 128, num_layers=2, batch_first=True)   # same arguments as torch.nn.LSTM

``impl="fast"`` (default; ``rnnlab.kernels`` when available, else fused), ``"fused"`` or
``"reference"`` (the equations one gate at a time). ``LSTM.from_torch(m)`` and
``.to_torch()`` move weights between rnnlab and torch.nn. ``with trace(layer) as t:`` runs a
layer gate by gate and keeps every step's gates and states (``rnnlab.nn.tracing``).

Options beyond torch.nn, all off by default (``rnnlab.nn.options`` has the equations):
``layer_norm``, ``recurrent_dropout``, ``zoneout``, ``weight_drop``, ``peephole`` (LSTM),
``gate_activation`` and ``activation`` (LSTM, GRU), e.g.
``LSTM(64, 128, layer_norm=True, weight_drop=0.3)``.
"""

from . import functional, options
from .cell import GRUCell, LSTMCell, RNNCell, RNNCellBase
from .options import ACTIVATIONS, CellOptions, OptionFallbackWarning, SequenceMasks
from .rnn import GRU, IMPLS, LSTM, RNN, RNNBase
from .tracing import LayerTrace, Trace, trace

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "RNNBase",
    "RNNCellBase",
    "IMPLS",
    "functional",
    "options",
    "ACTIVATIONS",
    "CellOptions",
    "OptionFallbackWarning",
    "SequenceMasks",
    "trace",
    "Trace",
    "LayerTrace",
]
