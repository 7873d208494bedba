r"""Cell options beyond ``torch.nn``: layer norm, recurrent dropout, zoneout, weight drop,
peepholes and the gate/candidate nonlinearities (issue 13).

Every option is off by default; with all of them off the layers are bit for bit the plain
ones (same code path, same parameters, same ``state_dict``). The modules take them as keywords
(``LSTM(64, 64, layer_norm=True, weight_drop=0.3)``); per layer and direction they hand the
layer function one :class:`CellOptions` (or ``None`` when nothing is on), see
``docs/ARCHITECTURE.md``.

The equations
-------------

Symbols as in ``rnnlab.nn.functional``: per layer and direction, step ``t``, batch ``N``,
hidden size ``H``, ``H_out`` (= ``P`` with an LSTM projection, else ``H``). For a gate ``k``
``W_ik`` / ``W_hk`` are its rows of ``W_ih`` / ``W_hh`` and ``b_ik`` / ``b_hk`` of the biases.
:math:`\sigma_g` is ``gate_activation`` (default sigmoid), :math:`\phi` is ``activation``
(default tanh), :math:`\psi` the RNN's ``nonlinearity``.

*Weight drop* (DropConnect on ``W_hh``, Merity et al. 2017, AWD-LSTM). In training, one mask
per forward call, layer and direction: :math:`\tilde W_{hh} = W_{hh} \odot M / (1 - p_w)`,
:math:`M_{jk} \sim \text{Bernoulli}(1 - p_w)`; in eval :math:`\tilde W_{hh} = W_{hh}`. The
module computes :math:`\tilde W_{hh}` and passes it to the layer function *as* ``w_hh``: every
impl (and every fast path) runs it unchanged, the gradient reaches the raw parameter through
the product (:math:`\partial L/\partial W_{hh} = \partial L/\partial\tilde W_{hh} \odot M/(1-p_w)`),
and the ``state_dict`` keeps the raw ``weight_hh_l{k}`` under its torch name. It is therefore
not part of :class:`CellOptions`.

*Recurrent dropout* (Gal & Ghahramani 2016). In training, one mask per sequence, layer and
direction, the same at every step, on the state that enters the recurrent product only
(inverted dropout): :math:`\hat h_{t-1} = h_{t-1} \odot m / (1 - p_r)`,
:math:`m \sim \text{Bernoulli}(1 - p_r)^{N \times H_{out}}`. The carry paths (the LSTM cell,
the GRU's :math:`z \odot h_{t-1}`, zoneout) use :math:`h_{t-1}` itself. Off in eval
(:math:`\hat h = h`).

*Layer norm* (Ba, Kiros & Hinton 2016, in the form of haste's LayerNormLSTM/GRU, but per gate
block): :math:`\text{LN}(v; \gamma) = \gamma \odot (v - \mu) / \sqrt{\sigma^2 + \epsilon}` with
:math:`\mu, \sigma^2` the mean and (biased) variance over the ``H`` units of *one gate block*,
:math:`\epsilon` = ``LAYER_NORM_EPS`` = 1e-5. The input and recurrent products are normalised
separately, each gate block on its own (haste and Ba et al. normalise the whole ``G*H`` vector at
once; one block per gate keeps one gate's scale from setting another's), with gains
``ln_weight_ih`` / ``ln_weight_hh`` (``G*H``, initialised to 1); the usual biases ``b_ih`` /
``b_hh`` are added after the normalisation and play the role of LN's bias, as in haste. The
LSTM also normalises the cell state before its output nonlinearity, with gain ``ln_weight_c``
and bias ``ln_bias_c`` (``H``, initialised to 1 and 0; no bias when ``bias=False``); the carried
cell state itself is not normalised. Without layer norm read :math:`\text{LN}(v) = v`.

Pre-activation of gate ``k`` (all three cells):

.. math::
    A_k = \text{LN}(x_t W_{ik}^T; \gamma^{x}_k) + b_{ik}
        + \text{LN}(\hat h_{t-1} \tilde W_{hk}^T; \gamma^{h}_k) + b_{hk}

LSTM (gates i, f, g, o; *peephole*, Gers & Schmidhuber 2000: diagonal weights
:math:`w_{ci}, w_{cf}, w_{co}` (``weight_peephole``, ``3*H``), the input and forget gates see
:math:`c_{t-1}`, the output gate sees the new cell :math:`\tilde c_t`):

.. math::
    i_t &= \sigma_g(A_i + w_{ci} \odot c_{t-1}) \qquad
    f_t  = \sigma_g(A_f + w_{cf} \odot c_{t-1}) \qquad
    g_t  = \phi(A_g) \\
    \tilde c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    o_t &= \sigma_g(A_o + w_{co} \odot \tilde c_t) \\
    \tilde h_t &= o_t \odot \phi(\text{LN}(\tilde c_t; \gamma^c) + \beta^c)
        \qquad (\text{then } \tilde h_t W_{hr}^T \text{ with a projection})

GRU (gates r, z, n; the reset gate multiplies the recurrent part with its bias, as in torch):

.. math::
    r_t &= \sigma_g(A_r) \qquad z_t = \sigma_g(A_z) \\
    n_t &= \phi(\text{LN}(x_t W_{in}^T; \gamma^x_n) + b_{in}
          + r_t \odot (\text{LN}(\hat h_{t-1} \tilde W_{hn}^T; \gamma^h_n) + b_{hn})) \\
    \tilde h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

RNN: :math:`\tilde h_t = \psi(A)` (one block, ``G`` = 1).

*Zoneout* (Krueger et al. 2017). Each unit keeps its previous value with probability ``p``:
in training :math:`h_t = d^h_t \odot h_{t-1} + (1 - d^h_t) \odot \tilde h_t` with a fresh
:math:`d^h_t \sim \text{Bernoulli}(p_h)` per step and unit; in eval the expectation
:math:`h_t = p_h h_{t-1} + (1 - p_h) \tilde h_t`. The LSTM zones out its cell state the same way
with :math:`p_c` (``zoneout=(p_h, p_c)``; a single number is both):
:math:`c_t = d^c_t \odot c_{t-1} + (1 - d^c_t) \odot \tilde c_t`, while :math:`\tilde h_t` is
computed from :math:`\tilde c_t` (the paper's form). Without zoneout :math:`h_t = \tilde h_t`,
:math:`c_t = \tilde c_t`. The layer's output at step ``t`` is :math:`h_t`.

Masks: drawn from torch's global generator on the input's device (like ``nn.Dropout``), so
``torch.manual_seed`` makes them reproducible. Per forward call, layer by layer and direction
by direction, in this order: the weight-drop mask, the recurrent-dropout mask, the zoneout
masks of h, then of c (each ``(L, N, .)``); only the ones in use, only in training.

Combinations: every option combines with every other, with ``bidirectional``, ``num_layers``,
``batch_first``, unbatched input, ``lengths=`` and ``PackedSequence`` (padded steps never run,
so their masks are unused; a pack's masks are drawn per row of its sorted batch), and with
``proj_size`` (the projection acts on :math:`\tilde h_t`; recurrent dropout and zoneout of h
then act on the ``P`` projected units): no option is refused with a projection.

Which form runs them
--------------------

``impl="reference"``: :func:`rnnlab.nn.functional.reference_layer`, the equations above gate
by gate. ``impl="fused"``: :func:`rnnlab.nn.functional.fused_layer`, one GEMM (and the
input-side layer norm) for all steps, the step's equations on the whole gate block, autograd.
``impl="fast"``: ``rnnlab.kernels.layer_function`` is told which options are on
(``RNNBase.options_on()``). On CPU the compiled time loops (``rnnlab/kernels/csrc/rnn_cpu.cpp``)
run every option with a hand-written backward (``rnnlab.kernels.COMPILED_OPTIONS``; what each
saves and its backward: ``docs/PERFORMANCE.md``, "Cell options"). ``weight_drop`` runs on every
fast path (the Python BPTT loop, Triton) since it only changes ``w_hh``; where the compiled loops
are unavailable (or ``RNNLAB_COMPILED=0``) and on GPU the other options run the fused form with
one :class:`OptionFallbackWarning` (on the opt-in CUDA-graph path weight drop too, since it
captures one graph per ``W_hh`` storage).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "CellOptions",
    "SequenceMasks",
    "LAYER_NORM_EPS",
    "OPTION_NAMES",
    "OPTION_DEFAULTS",
    "check_probability",
    "check_activation",
    "dropout_mask",
    "zoneout_mask",
    "OptionFallbackWarning",
    "options_set",
    "check_cell_options",
    "reject_foreign_options",
    "option_parameters",
    "init_option_parameter",
    "options_repr",
]

#: The nonlinearities ``gate_activation`` and ``activation`` accept. Each one's derivative is a
#: function of its output ``y`` (what a hand-written backward needs): sigmoid ``y (1 - y)``,
#: hard_sigmoid ``1/6`` where ``0 < y < 1``, tanh ``1 - y^2``, hard_tanh ``1`` where
#: ``-1 < y < 1``, relu ``1`` where ``y > 0`` (0 elsewhere).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,  # clamp(x / 6 + 1/2, 0, 1), torch's definition
    "tanh": torch.tanh,
    "hard_tanh": F.hardtanh,  # clamp(x, -1, 1)
    "relu": torch.relu,
}

#: Epsilon of every layer normalisation, inside the square root (as torch.nn.LayerNorm).
LAYER_NORM_EPS = 1e-5

#: The module keywords and their defaults (all off), in the order they are documented.
OPTION_DEFAULTS: dict[str, Any] = {
    "layer_norm": False,
    "recurrent_dropout": 0.0,
    "zoneout": 0.0,
    "weight_drop": 0.0,
    "peephole": False,
    "gate_activation": "sigmoid",
    "activation": "tanh",
}
OPTION_NAMES = tuple(OPTION_DEFAULTS)


def check_probability(owner: str, name: str, value: Any) -> float:
    """``value`` as a float in [0, 1), or a ValueError naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def check_activation(owner: str, name: str, value: Any) -> str:
    """``value`` if it names one of :data:`ACTIVATIONS`, else a ValueError listing them."""
    if not isinstance(value, str) or value not in ACTIVATIONS:
        valid = ", ".join(map(repr, ACTIVATIONS))
        raise ValueError(f"{owner}: {name} must be one of {valid}, got {value!r}")
    return value


def dropout_mask(p: float, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An inverted-dropout mask: 0 with probability ``p``, else ``1 / (1 - p)`` (dtype, device of ``like``)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - p).div_(1.0 - p)


#: Random bits per zoneout keep-mask entry. A mask has an entry per step and unit, (L, N, H),
#: and torch's CPU generator costs about 2.5 ns per 32-bit draw: ``bernoulli_`` took 4.8 ms for
#: 200 x 64 x 64 entries, more than half of an RNN layer's forward and backward (8.8 ms). Two
#: entries per draw take about 2 ms; the keep probability is then ``p`` rounded to a multiple
#: of 2^-15 (an error of at most 1.6e-5).
ZONEOUT_MASK_BITS = 15


def zoneout_mask(p: float, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A zoneout keep-mask ``d``: 1 (keep the previous value) with probability ``p``, else 0.

    Each entry compares 15 random bits (half of one 31-bit draw of torch's generator, so
    ``torch.manual_seed`` makes it reproducible) with ``round(p * 2^15)``: the probability is
    ``round(p * 2^15) / 2^15`` (see ``ZONEOUT_MASK_BITS``).
    """
    n = math.prod(shape)
    span = 1 << ZONEOUT_MASK_BITS
    words = torch.empty((n + 1) // 2, dtype=torch.int32, device=like.device).random_()  # uniform in [0, 2^31)
    words.bitwise_and_(0x7FFF7FFF)  # two uniform 15-bit integers per draw, one in each 16-bit half
    threshold = min(round(p * span), span - 1)
    return (words.view(torch.int16)[:n] < threshold).view(shape).to(like.dtype)


@dataclass(frozen=True, eq=False)
class CellOptions:
    """The options of one layer and direction for one call (the fields the equations above use).

    Every field at its default is the plain cell. For a *layer* function the zoneout masks hold
    all steps, ``(L, N, .)``; for a *cell* function one step, ``(N, .)``.

    * ``gate_activation``, ``activation``: names from :data:`ACTIVATIONS`.
    * ``ln_weight_ih``, ``ln_weight_hh``: ``(G*H,)`` layer-norm gains of the input and recurrent
      products (both or neither); ``ln_weight_c``, ``ln_bias_c``: ``(H,)`` LSTM cell-state gain
      (with layer norm) and bias (or None when the layer has no biases).
    * ``weight_peephole``: ``(3*H,)`` LSTM peephole weights, rows i, f, o.
    * ``recurrent_mask``: ``(N, H_out)`` inverted-dropout mask on ``h_{t-1}`` in the recurrent
      product (values 0 and ``1/(1-p)``).
    * ``zoneout_h``, ``zoneout_c``: the keep-masks ``d`` (values 0 and 1) in training, or the
      probability ``p`` as a float in eval (the expectation); 0.0 = no zoneout. ``zoneout_c``
      is for the LSTM only.
    """

    gate_activation: str = "sigmoid"
    activation: str = "tanh"
    ln_weight_ih: Tensor | None = None
    ln_weight_hh: Tensor | None = None
    ln_weight_c: Tensor | None = None
    ln_bias_c: Tensor | None = None
    weight_peephole: Tensor | None = None
    recurrent_mask: Tensor | None = None
    zoneout_h: Tensor | float = 0.0
    zoneout_c: Tensor | float = 0.0

    def __post_init__(self) -> None:
        check_activation("CellOptions", "gate_activation", self.gate_activation)
        check_activation("CellOptions", "activation", self.activation)
        if (self.ln_weight_ih is None) != (self.ln_weight_hh is None):
            raise ValueError("CellOptions: ln_weight_ih and ln_weight_hh are given together (layer norm) or not at all")
        if self.ln_weight_ih is None and (self.ln_weight_c is not None or self.ln_bias_c is not None):
            raise ValueError("CellOptions: ln_weight_c / ln_bias_c need layer norm (ln_weight_ih, ln_weight_hh)")
        for name in ("zoneout_h", "zoneout_c"):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                check_probability("CellOptions", name, value)

    @property
    def layer_norm(self) -> bool:
        return self.ln_weight_ih is not None

    def names(self) -> list[str]:
        """The options that are on, by their module keyword (for messages and dispatch)."""
        on = []
        if self.layer_norm:
            on.append("layer_norm")
        if self.recurrent_mask is not None:
            on.append("recurrent_dropout")
        if _zoned(self.zoneout_h) or _zoned(self.zoneout_c):
            on.append("zoneout")
        if self.weight_peephole is not None:
            on.append("peephole")
        if self.gate_activation != "sigmoid":
            on.append("gate_activation")
        if self.activation != "tanh":
            on.append("activation")
        return on

    @property
    def active(self) -> bool:
        """Whether any option is on (else the plain cell computes the same)."""
        return bool(self.names())

    def at_step(self, t: int) -> CellOptions:
        """The options of step ``t`` of a layer call: the zoneout masks cut to ``[t]``."""
        zh, zc = self.zoneout_h, self.zoneout_c
        if not isinstance(zh, Tensor) and not isinstance(zc, Tensor):
            return self
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["zoneout_h"] = zh[t] if isinstance(zh, Tensor) else zh
        values["zoneout_c"] = zc[t] if isinstance(zc, Tensor) else zc
        return CellOptions(**values)


def _zoned(value: Tensor | float) -> bool:
    return isinstance(value, Tensor) or value > 0


@dataclass(frozen=True, eq=False)
class SequenceMasks:
    """The masks a cell keeps for a whole sequence: pass the same object at every step.

    ``recurrent``: ``(N, H)`` recurrent-dropout mask (or None); ``weight_hh``: the weight-drop
    mask of ``W_hh`` (or None). Made by ``cell.draw_masks(batch_size)``.
    """

    recurrent: Tensor | None = None
    weight_hh: Tensor | None = None


class OptionFallbackWarning(UserWarning):
    """A fast path (``impl="fast"``) has no kernel for an option that is on: the layer runs the
    fused autograd form (the same equations, slower) instead. Given once per forward call."""


# ----------------------------------------------------------------------------------------
# Module keywords: validation, parameters, printing (shared by the layers and the cells)
# ----------------------------------------------------------------------------------------

_GATES = {"lstm": 4, "gru": 3, "rnn": 1}

#: The options that only some cells have.
_NOT_EVERYWHERE = ("peephole", "gate_activation", "activation")


def reject_foreign_options(owner: str, kwargs: dict[str, Any]) -> None:
    """Pop the options ``owner`` (a GRU or RNN class) does not have: their default value is
    accepted (one set of keywords can build any class), anything else is a ValueError."""
    for key in _NOT_EVERYWHERE:
        if key not in kwargs:
            continue
        default = OPTION_DEFAULTS[key]
        value = kwargs.pop(key)
        if value == default and type(value) is type(default):
            continue
        if key == "peephole":
            raise ValueError(
                f"{owner}: peephole connections are only defined for LSTM (the gates look at the cell state, "
                f"which {owner.removesuffix('Cell')} has not), got peephole={value!r}"
            )
        raise ValueError(
            f"{owner}: {key} is only for LSTM and GRU (an RNN has no gates; its nonlinearity is set by "
            f"nonlinearity='tanh' or 'relu'), got {key}={value!r}"
        )


def check_cell_options(
    owner: str,
    kind: str,
    *,
    layer_norm: Any = False,
    recurrent_dropout: Any = 0.0,
    zoneout: Any = 0.0,
    weight_drop: Any = 0.0,
    peephole: Any = False,
    gate_activation: Any = "sigmoid",
    activation: Any = "tanh",
) -> dict[str, Any]:
    """Validate the options of a ``kind`` ("lstm", "gru", "rnn") layer or cell named ``owner``.

    Returns them normalised: floats, and ``zoneout`` as a pair ``(p_h, p_c)`` (``p_c`` = 0 except
    for LSTM). Errors name the argument, what was expected and what was found.
    """
    for key, value in (("layer_norm", layer_norm), ("peephole", peephole)):
        if not isinstance(value, bool):
            raise TypeError(f"{owner}: {key} should be of type bool, got: {type(value).__name__}")
    if peephole and kind != "lstm":
        reject_foreign_options(owner, {"peephole": peephole})
    if kind == "lstm" and isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(
                f"{owner}: zoneout must be a probability or a pair (h, c) of probabilities, got {zoneout!r}"
            )
        z_h = check_probability(owner, "zoneout[0] (h)", zoneout[0])
        z_c = check_probability(owner, "zoneout[1] (c)", zoneout[1])
    elif isinstance(zoneout, (tuple, list)):
        raise ValueError(
            f"{owner}: zoneout must be a probability in [0, 1) (a pair (h, c) is for LSTM, which has a cell state), "
            f"got {zoneout!r}"
        )
    else:
        z_h = check_probability(owner, "zoneout", zoneout)
        z_c = z_h if kind == "lstm" else 0.0
    return dict(
        layer_norm=layer_norm,
        recurrent_dropout=check_probability(owner, "recurrent_dropout", recurrent_dropout),
        zoneout=(z_h, z_c),
        weight_drop=check_probability(owner, "weight_drop", weight_drop),
        peephole=peephole,
        gate_activation=check_activation(owner, "gate_activation", gate_activation),
        activation=check_activation(owner, "activation", activation),
    )


def option_parameters(
    kind: str, opts: dict[str, Any], hidden_size: int, bias: bool
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the parameters the options add to one layer and direction (or one cell),
    without the ``_l{k}`` suffix: layer-norm gains ``ln_weight_ih``, ``ln_weight_hh`` (G*H), for
    LSTM ``ln_weight_c`` and ``ln_bias_c`` (H; the bias only with ``bias``); ``weight_peephole``
    (3*H, rows i, f, o)."""
    gates = _GATES[kind] * hidden_size
    out: list[tuple[str, tuple[int, ...]]] = []
    if opts["layer_norm"]:
        out += [("ln_weight_ih", (gates,)), ("ln_weight_hh", (gates,))]
        if kind == "lstm":
            out.append(("ln_weight_c", (hidden_size,)))
            if bias:
                out.append(("ln_bias_c", (hidden_size,)))
    if opts["peephole"]:
        out.append(("weight_peephole", (3 * hidden_size,)))
    return out


def init_option_parameter(name: str, param: Tensor, bound: float) -> None:
    """Layer-norm gains 1, layer-norm biases 0, peephole weights U(-bound, bound)."""
    if name.startswith("ln_weight"):
        nn.init.ones_(param)
    elif name.startswith("ln_bias"):
        nn.init.zeros_(param)
    else:
        nn.init.uniform_(param, -bound, bound)


def options_set(opts: dict[str, Any], kind: str) -> dict[str, Any]:
    """The options of ``opts`` (as ``check_cell_options`` returns them) that differ from their
    defaults, as keywords: ``zoneout`` a number, or a pair for an LSTM with two rates."""
    out = {}
    for key, default in OPTION_DEFAULTS.items():
        value = opts[key]
        if key == "zoneout":
            z_h, z_c = value
            if z_h or z_c:
                out[key] = z_h if (kind != "lstm" or z_h == z_c) else (z_h, z_c)
        elif value != default:
            out[key] = value
    return out


def options_repr(opts: dict[str, Any], kind: str) -> str:
    """``, layer_norm=True, zoneout=0.1``: the options that differ from their defaults."""
    return "".join(f", {key}={value!r}" for key, value in options_set(opts, kind).items())


def set_option_attributes(module: Any, owner: str, mode: str, options: dict[str, Any]) -> None:
    """Checks a module's cell options (``check_cell_options``) and sets them as its attributes.

    ``module._kind``: "rnn", "lstm" or "gru"; ``module._options``: the checked dict; one public
    attribute per option, except ``zoneout``: the (p_h, p_c) pair for the LSTM, p for GRU and RNN
    (the pair stays in ``module._zoneout``).
    """
    kind = "rnn" if mode.startswith("rnn_") else mode
    opts = check_cell_options(owner, kind, **options)
    module._kind, module._options = kind, opts
    module.layer_norm = opts["layer_norm"]
    module.recurrent_dropout = opts["recurrent_dropout"]
    module._zoneout = opts["zoneout"]  # (p_h, p_c); p_c = 0 except for LSTM
    module.zoneout = opts["zoneout"] if kind == "lstm" else opts["zoneout"][0]
    module.weight_drop = opts["weight_drop"]
    module.peephole = opts["peephole"]
    module.gate_activation = opts["gate_activation"]
    module.activation = opts["activation"]
