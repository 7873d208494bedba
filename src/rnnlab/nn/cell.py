r"""``RNNCell``, ``LSTMCell`` and ``GRUCell``: one step, drop-ins for the ``torch.nn`` cells.

Same constructor, parameters (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``),
gate order and initialisation as torch.nn; the step is computed by
``rnnlab.nn.functional`` (``impl="reference"``: one gate at a time; otherwise the fused
gate block). Input ``(N, H_in)`` or unbatched ``(H_in,)``; state ``(N, H)`` or ``(H,)``.

The cells take the layers' options (``rnnlab/nn/options.py``) with the same keywords and
parameter names without the ``_l{k}`` suffix (``ln_weight_ih``, ``weight_peephole``...). A cell
is one step, so it cannot know where a sequence starts: zoneout draws its mask per call (per
step, as in the layers), while recurrent dropout and weight drop, one mask per *sequence* in
the layers, take the masks of ``masks=cell.draw_masks(N)`` when given (pass the same object at
every step of a sequence) and otherwise draw fresh ones per call.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from . import functional
from .options import (
    CellOptions,
    SequenceMasks,
    dropout_mask,
    init_option_parameter,
    option_parameters,
    options_repr,
    options_set,
    reject_foreign_options,
    set_option_attributes,
    zoneout_mask,
)
from .rnn import check_impl, check_size

__all__ = ["RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]


class RNNCellBase(nn.Module):
    """Shared constructor and checks of the cells."""

    mode: str
    _torch_class: type[nn.RNNCellBase]

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        bias: bool,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "fast",
        **options: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_size(name, "input_size", input_size)
        check_size(name, "hidden_size", hidden_size)
        if not isinstance(bias, bool):
            raise TypeError(f"{name}: bias should be of type bool, got: {type(bias).__name__}")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.impl = check_impl(name, impl)
        set_option_attributes(self, name, mode, options)
        factory = {"device": device, "dtype": dtype}
        gates = functional.GATES[mode] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((gates, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gates, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._option_weights = []
        for pname, shape in option_parameters(self._kind, self._options, hidden_size, bias):
            self.register_parameter(pname, nn.Parameter(torch.empty(shape, **factory)))
            self._option_weights.append(pname)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's parameters from U(-1/sqrt(H), 1/sqrt(H)), in torch.nn's order; then the
        options' (layer-norm gains 1 and biases 0, peepholes from the same uniform)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for pname in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            weight = getattr(self, pname)
            if weight is not None:
                nn.init.uniform_(weight, -bound, bound)
        for pname in self._option_weights:
            init_option_parameter(pname, getattr(self, pname), bound)

    @property
    def options(self) -> dict[str, Any]:
        """The option keywords this cell was built with (normalised; ``zoneout`` as ``(p_h, p_c)``)."""
        return dict(self._options)

    def draw_masks(self, batch_size: int) -> SequenceMasks:
        """The recurrent-dropout mask ``(N, H)`` and weight-drop mask of ``W_hh`` for one sequence
        (None for an option that is off, and both None in eval): pass the result as ``masks=``
        at every step of the sequence."""
        w = self.weight_hh
        train = self.training
        rec = None
        if train and self.recurrent_dropout > 0:
            rec = dropout_mask(self.recurrent_dropout, (batch_size, self.hidden_size), w)
        drop = dropout_mask(self.weight_drop, tuple(w.shape), w) if train and self.weight_drop > 0 else None
        return SequenceMasks(recurrent=rec, weight_hh=drop)

    def _step_options(self, x: Tensor, masks: SequenceMasks | None) -> tuple[Tensor, CellOptions | None]:
        """This call's ``W_hh`` (weight-dropped in training) and :class:`CellOptions` (or None)."""
        name = type(self).__name__
        if masks is not None and not isinstance(masks, SequenceMasks):
            raise TypeError(f"{name}: masks must come from {name}.draw_masks(batch_size), got {type(masks).__name__}")
        batch = x.shape[0]
        if masks is None:
            masks = self.draw_masks(batch)
        elif masks.recurrent is not None and masks.recurrent.shape[0] != batch:
            raise ValueError(
                f"{name}: masks were drawn for a batch of {masks.recurrent.shape[0]}, got input with batch {batch}"
            )
        w_hh = self.weight_hh if masks.weight_hh is None else self.weight_hh * masks.weight_hh
        p_h, p_c = self._zoneout
        train = self.training
        on = (
            self.layer_norm
            or self.peephole
            or self.gate_activation != "sigmoid"
            or self.activation != "tanh"
            or masks.recurrent is not None
            or p_h > 0
            or p_c > 0
        )
        if not on:
            return w_hh, None
        options = CellOptions(
            gate_activation=self.gate_activation,
            activation=self.activation,
            ln_weight_ih=getattr(self, "ln_weight_ih", None),
            ln_weight_hh=getattr(self, "ln_weight_hh", None),
            ln_weight_c=getattr(self, "ln_weight_c", None),
            ln_bias_c=getattr(self, "ln_bias_c", None),
            weight_peephole=getattr(self, "weight_peephole", None),
            recurrent_mask=masks.recurrent,
            zoneout_h=zoneout_mask(p_h, (batch, self.hidden_size), x) if train and p_h > 0 else p_h,  # (N, H)
            zoneout_c=zoneout_mask(p_c, (batch, self.hidden_size), x) if train and p_c > 0 else p_c,
        )
        return w_hh, options

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"  # type: ignore[attr-defined]
        if self.impl != "fast":
            s += f", impl={self.impl!r}"
        return s + options_repr(self._options, self._kind)

    def _kwargs(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity} if self.mode.startswith("rnn_") else {}  # type: ignore[attr-defined]

    @classmethod
    def from_torch(cls, module: nn.RNNCellBase, *, impl: str = "fast", **options: Any) -> RNNCellBase:
        """A copy of a ``torch.nn`` cell (same configuration, weights, device, dtype); ``options``
        are added on top, their parameters at their initial values."""
        if not isinstance(module, cls._torch_class):
            raise TypeError(
                f"{cls.__name__}.from_torch expects a torch.nn.{cls._torch_class.__name__}, got {type(module).__name__}"
            )
        extra = {"nonlinearity": module.nonlinearity} if cls is RNNCell else {}
        w = module.weight_ih
        new = cls(
            module.input_size,
            module.hidden_size,
            module.bias,
            device=w.device,
            dtype=w.dtype,
            impl=impl,
            **extra,
            **options,
        )
        missing, unexpected = new.load_state_dict(module.state_dict(), strict=False)
        if unexpected or set(missing) - set(new._option_weights):  # pragma: no cover - same configuration
            raise RuntimeError(f"{cls.__name__}.from_torch: missing {missing}, unexpected {unexpected}")
        return new

    def to_torch(self) -> nn.RNNCellBase:
        """The equivalent ``torch.nn`` cell, with a copy of these weights (only without options)."""
        on = list(options_set(self._options, self._kind))
        if on:
            raise ValueError(
                f"{type(self).__name__}.to_torch: torch.nn.{self._torch_class.__name__} has no {', '.join(on)}; "
                "only a cell with every option off has a torch.nn equivalent"
            )
        w = self.weight_ih
        module = self._torch_class(
            self.input_size, self.hidden_size, self.bias, device=w.device, dtype=w.dtype, **self._kwargs()
        )
        module.load_state_dict(self.state_dict(), strict=True)
        return module

    def _prepare(
        self, input: Tensor, states: tuple[Tensor | None, ...], labels: tuple[str, ...]
    ) -> tuple[Tensor, list[Tensor], bool]:
        """Check shapes/dtypes/devices, add the batch dimension, fill omitted states with zeros."""
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        for s, label in zip(states, labels):
            if s is not None and s.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {s.dim()}D instead")
        batched = input.dim() == 2
        for s, label in zip(states, labels):
            if s is not None and s.dim() != input.dim():
                raise RuntimeError(
                    f"{name}: {label} must have the same number of dimensions as input ({input.dim()}D), got {s.dim()}D"
                )
        if not batched:
            input = input.unsqueeze(0)
        w = self.weight_ih
        if input.dtype != w.dtype:
            raise RuntimeError(f"{name}: input dtype ({input.dtype}) does not match weight dtype ({w.dtype})")
        if input.device != w.device:
            raise RuntimeError(f"{name}: input is on {input.device} but the parameters are on {w.device}")
        if input.shape[1] != self.input_size:
            raise RuntimeError(
                f"{name}: input has inconsistent input_size: got {input.shape[1]} expected {self.input_size}"
            )
        batch = input.shape[0]
        out = []
        for s, label in zip(states, labels):
            if s is None:
                out.append(input.new_zeros(batch, self.hidden_size))
                continue
            s = s if batched else s.unsqueeze(0)
            if s.shape[0] != batch:
                raise RuntimeError(f"{name}: Input batch size {batch} doesn't match {label} batch size {s.shape[0]}")
            if s.shape[1] != self.hidden_size:
                raise RuntimeError(
                    f"{name}: {label} has inconsistent hidden_size: got {s.shape[1]}, expected {self.hidden_size}"
                )
            if s.dtype != input.dtype:
                raise RuntimeError(f"{name}: {label} dtype ({s.dtype}) does not match input dtype ({input.dtype})")
            if s.device != input.device:
                raise RuntimeError(f"{name}: {label} is on {s.device} but input is on {input.device}")
            out.append(s)
        return input, out, batched


class RNNCell(RNNCellBase):
    r"""Elman RNN cell, a drop-in for ``torch.nn.RNNCell``:
    :math:`h' = \phi(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})`, ``phi`` tanh or ReLU.

    x (N, H_in) or (H_in,), h (N, H) or (H,) (zeros if omitted) -> h' like h.

    Example::

        >>> cell = RNNCell(10, 20)
        >>> h = cell(torch.randn(3, 10))   # (3, 20)
    """

    _torch_class = nn.RNNCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "fast",
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
        **kwargs: Any,
    ) -> None:
        reject_foreign_options("RNNCell", kwargs)
        if kwargs:
            raise TypeError(f"RNNCell.__init__() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            "rnn_" + nonlinearity,
            input_size,
            hidden_size,
            bias,
            device,
            dtype,
            impl=impl,
            layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            weight_drop=weight_drop,
        )

    def forward(self, input: Tensor, hx: Tensor | None = None, *, masks: SequenceMasks | None = None) -> Tensor:
        x, (h,), batched = self._prepare(input, (hx,), ("hidden",))
        w_hh, opt = self._step_options(x, masks)
        if self.impl == "reference":
            h = functional.rnn_cell_reference(
                x, h, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, self.nonlinearity, opt
            )
        else:
            h, _ = functional.cell_fused(
                self.mode, x, h, None, self.weight_ih, w_hh, self.bias_ih, self.bias_hh, None, opt
            )
        return h if batched else h.squeeze(0)


class LSTMCell(RNNCellBase):
    r"""LSTM cell, a drop-in for ``torch.nn.LSTMCell`` (gates i, f, g, o)::

        i, f, o = sigmoid(x W_i*^T + b_i* + h W_h*^T + b_h*);  g = tanh(...)
        c' = f * c + i * g;  h' = o * tanh(c')

    x (N, H_in) or (H_in,), hx = (h, c) each (N, H) or (H,) (zeros if omitted) -> (h', c').

    Example::

        >>> cell = LSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))   # (3, 20) each
    """

    _torch_class = nn.LSTMCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "fast",
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
        peephole: bool = False,
        gate_activation: str = "sigmoid",
        activation: str = "tanh",
    ) -> None:
        super().__init__(
            "lstm",
            input_size,
            hidden_size,
            bias,
            device,
            dtype,
            impl=impl,
            layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            weight_drop=weight_drop,
            peephole=peephole,
            gate_activation=gate_activation,
            activation=activation,
        )

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, *, masks: SequenceMasks | None = None
    ) -> tuple[Tensor, Tensor]:
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of tensors, got {type(hx).__name__}")
        states = (None, None) if hx is None else tuple(hx)
        x, (h, c), batched = self._prepare(input, states, ("hx[0]", "hx[1]"))
        w_hh, opt = self._step_options(x, masks)
        w_ih, b_ih, b_hh = self.weight_ih, self.bias_ih, self.bias_hh
        if self.impl == "reference":
            h, c = functional.lstm_cell_reference(x, h, c, w_ih, w_hh, b_ih, b_hh, None, opt)
        else:
            h, c = functional.cell_fused("lstm", x, h, c, w_ih, w_hh, b_ih, b_hh, None, opt)  # type: ignore[assignment]
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(RNNCellBase):
    r"""GRU cell, a drop-in for ``torch.nn.GRUCell`` (gates r, z, n, torch's reset placement)::

        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr);  z = sigmoid(...)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));  h' = (1 - z) * n + z * h

    x (N, H_in) or (H_in,), h (N, H) or (H,) (zeros if omitted) -> h' like h.

    Example::

        >>> cell = GRUCell(10, 20)
        >>> h = cell(torch.randn(3, 10))   # (3, 20)
    """

    _torch_class = nn.GRUCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "fast",
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
        gate_activation: str = "sigmoid",
        activation: str = "tanh",
        **kwargs: Any,
    ) -> None:
        reject_foreign_options("GRUCell", kwargs)
        if kwargs:
            raise TypeError(f"GRUCell.__init__() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        super().__init__(
            "gru",
            input_size,
            hidden_size,
            bias,
            device,
            dtype,
            impl=impl,
            layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            weight_drop=weight_drop,
            gate_activation=gate_activation,
            activation=activation,
        )

    def forward(self, input: Tensor, hx: Tensor | None = None, *, masks: SequenceMasks | None = None) -> Tensor:
        x, (h,), batched = self._prepare(input, (hx,), ("hidden",))
        w_hh, opt = self._step_options(x, masks)
        w_ih, b_ih, b_hh = self.weight_ih, self.bias_ih, self.bias_hh
        if self.impl == "reference":
            h = functional.gru_cell_reference(x, h, w_ih, w_hh, b_ih, b_hh, opt)
        else:
            h, _ = functional.cell_fused("gru", x, h, None, w_ih, w_hh, b_ih, b_hh, None, opt)
        return h if batched else h.squeeze(0)
