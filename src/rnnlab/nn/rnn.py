r"""``RNN``, ``LSTM`` and ``GRU`` computed from the equations: drop-ins for ``torch.nn``.

The modules handle the layout (``batch_first``, unbatched input, ``PackedSequence``,
the ``lengths`` keyword, stacking, the two directions, dropout between layers) and call
one layer function per (layer, direction), with the signature of
``rnnlab.nn.functional.fused_layer`` (see ``docs/ARCHITECTURE.md``).

The options beyond torch.nn (``layer_norm``, ``recurrent_dropout``, ``zoneout``,
``weight_drop``, ``peephole``, ``gate_activation``, ``activation``; equations and design in
``rnnlab/nn/options.py``) are validated and own their parameters here; per call the module
draws their masks, applies weight drop to ``W_hh`` and passes one ``CellOptions`` per layer and
direction to the layer function.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional
from .options import (
    CellOptions,
    dropout_mask,
    init_option_parameter,
    option_parameters,
    options_repr,
    options_set,
    reject_foreign_options,
    set_option_attributes,
    zoneout_mask,
)

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "IMPLS"]

#: Accepted values of the ``impl`` keyword.
IMPLS = ("fast", "fused", "reference")

LayerFn = Callable[..., tuple[Tensor, Tensor, Tensor | None]]


def _check_size(owner: str, name: str, value: Any, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} should be of type int, got: {type(value).__name__}")
    if value < minimum:
        if minimum == 1:
            raise ValueError(f"{owner}: {name} must be greater than zero, got {value}")
        raise ValueError(f"{owner}: {name} should be a positive integer or zero to disable projections, got {value}")


def _check_impl(owner: str, impl: Any) -> str:
    if impl not in IMPLS:
        raise ValueError(f"{owner}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    return impl


#: The checks shared with ``rnnlab.nn.cell`` (its cells validate their arguments the same way).
check_size = _check_size
check_impl = _check_impl


def _check_lengths(owner: str, lengths: Any, batch: int, steps: int) -> Tensor:
    """Validate the ``lengths`` keyword: an integer ``(N,)`` tensor with 1 <= lengths <= L."""
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{owner}: lengths must be a torch.Tensor of shape ({batch},), got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"{owner}: lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(
            f"{owner}: lengths must have shape ({batch},) (one length per sequence), got {tuple(lengths.shape)}"
        )
    if batch > 0:
        low, high = torch.aminmax(lengths)
        low, high = int(low), int(high)
        if low < 1 or high > steps:
            raise ValueError(
                f"{owner}: lengths must lie in [1, {steps}] (the padded sequence length), got min {low} and max {high}"
            )
    return lengths.to(torch.int64)


def _reject_kwargs(owner: str, kwargs: dict[str, Any]) -> None:
    if "proj_size" in kwargs:
        raise ValueError(f"{owner}: proj_size argument is only supported for LSTM, not RNN or GRU")
    reject_foreign_options(owner, kwargs)
    if kwargs:
        raise TypeError(f"{owner}.__init__() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")


class RNNBase(nn.Module):
    """Shared constructor, parameters and forward of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    mode: str  # "rnn_tanh" | "rnn_relu" | "lstm" | "gru"
    _torch_class: type[nn.RNNBase]
    #: Trace mode (set only inside ``rnnlab.nn.tracing.trace``): an object whose ``layer_function``
    #: replaces ``impl`` and records every step's gates and states. None: no tracing, no cost.
    tracer: Any = None

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "fast",
        **options: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:  # type: ignore[operator]
            raise ValueError(
                f"{name}: dropout should be a number in range [0, 1] representing the probability of an "
                f"element being zeroed, got {dropout!r}"
            )
        if not isinstance(bias, bool):
            raise TypeError(f"{name}: bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"{name}: batch_first should be of type bool, got: {type(batch_first).__name__}")
        _check_size(name, "input_size", input_size)
        _check_size(name, "hidden_size", hidden_size)
        _check_size(name, "num_layers", num_layers)
        _check_size(name, "proj_size", proj_size, minimum=0)
        if proj_size >= hidden_size:
            raise ValueError(
                f"{name}: proj_size has to be smaller than hidden_size, got proj_size={proj_size} and hidden_size={hidden_size}"
            )
        if dropout > 0 and num_layers == 1:  # type: ignore[operator]
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)  # type: ignore[arg-type]
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        self.impl = _check_impl(name, impl)
        set_option_attributes(self, name, mode, options)

        factory = {"device": device, "dtype": dtype}
        gate_size = functional.GATES[mode] * hidden_size
        out_size = proj_size if proj_size > 0 else hidden_size
        directions = 2 if self.bidirectional else 1
        self._all_weights: list[list[str]] = []
        self._option_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else out_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
                shapes = [(gate_size, layer_input), (gate_size, out_size)]
                if bias:
                    names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
                    shapes += [(gate_size,), (gate_size,)]
                if proj_size > 0:
                    names.append(f"weight_hr{suffix}")
                    shapes.append((proj_size, hidden_size))
                for pname, shape in zip(names, shapes):
                    self.register_parameter(pname, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append(names)
                extra = [
                    (base + suffix, shape)
                    for base, shape in option_parameters(self._kind, self._options, hidden_size, bias)
                ]
                for pname, shape in extra:
                    self.register_parameter(pname, nn.Parameter(torch.empty(shape, **factory)))
                self._option_weights.append([pname for pname, _ in extra])
        self.reset_parameters()

    # -- parameters ------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """torch.nn's parameters from U(-1/sqrt(H), 1/sqrt(H)), in torch.nn's order (same seed,
        same values); then the options' (layer-norm gains 1 and biases 0, peepholes from the
        same uniform)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for names in self._all_weights:
            for pname in names:
                nn.init.uniform_(getattr(self, pname), -bound, bound)
        for names in self._option_weights:
            for pname in names:
                init_option_parameter(pname, getattr(self, pname), bound)

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters per (layer, direction): ``[w_ih, w_hh, (b_ih, b_hh), (w_hr)]``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn (there is no cuDNN weight buffer here)."""

    def _layer_weights(
        self, layer: int, direction: int
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        get = lambda n: getattr(self, n + suffix) if hasattr(self, n + suffix) else None  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")

    @property
    def _out_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.impl != "fast":
            s += f", impl={self.impl!r}"
        return s + options_repr(self._options, self._kind)

    @property
    def options(self) -> dict[str, Any]:
        """The option keywords this layer was built with (normalised; ``zoneout`` as ``(p_h, p_c)``)."""
        return dict(self._options)

    def options_on(self) -> list[str]:
        """The options that change this layer's computation in its current mode (train/eval):
        ``recurrent_dropout`` and ``weight_drop`` only in training; ``zoneout`` in both (eval
        runs its expectation)."""
        on = []
        if self.layer_norm:
            on.append("layer_norm")
        if self.recurrent_dropout > 0 and self.training:
            on.append("recurrent_dropout")
        if self._zoneout[0] > 0 or self._zoneout[1] > 0:
            on.append("zoneout")
        if self.weight_drop > 0 and self.training:
            on.append("weight_drop")
        if self.peephole:
            on.append("peephole")
        if self.gate_activation != "sigmoid":
            on.append("gate_activation")
        if self.activation != "tanh":
            on.append("activation")
        return on

    # -- torch.nn interop --------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
        )
        if self.mode == "lstm":
            cfg["proj_size"] = self.proj_size
        if self.mode.startswith("rnn_"):
            cfg["nonlinearity"] = self.mode[4:]
        return cfg

    @classmethod
    def from_torch(cls, module: nn.RNNBase, *, impl: str = "fast", **options: Any) -> RNNBase:
        """A copy of a ``torch.nn`` recurrent module (same configuration, weights, device, dtype).

        ``options`` (``layer_norm=True``, ...) are added on top: their parameters start at
        their initial values (layer-norm gains 1 and biases 0, peepholes random).
        """
        if not isinstance(module, cls._torch_class):
            raise TypeError(
                f"{cls.__name__}.from_torch expects a torch.nn.{cls._torch_class.__name__}, got {type(module).__name__}"
            )
        cfg: dict[str, Any] = dict(
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
        if cls is LSTM:
            cfg["proj_size"] = module.proj_size
        if cls is RNN:
            cfg["nonlinearity"] = module.nonlinearity
        first = next(module.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the dropout warning was already given for `module`
            new = cls(
                module.input_size,
                module.hidden_size,
                **cfg,
                device=first.device,
                dtype=first.dtype,
                impl=impl,
                **options,
            )
        missing, unexpected = new.load_state_dict(module.state_dict(), strict=False)
        option_names = {n for names in new._option_weights for n in names}
        if unexpected or set(missing) - option_names:  # pragma: no cover - same configuration, same names
            raise RuntimeError(f"{cls.__name__}.from_torch: missing {missing}, unexpected {unexpected}")
        new.train(module.training)
        return new

    def to_torch(self) -> nn.RNNBase:
        """The equivalent ``torch.nn`` module, with a copy of these weights (only without options:
        torch.nn has none of them)."""
        on = list(options_set(self._options, self._kind))
        if on:
            raise ValueError(
                f"{type(self).__name__}.to_torch: torch.nn.{self._torch_class.__name__} has no {', '.join(on)}; "
                "only a layer with every option off has a torch.nn equivalent"
            )
        first = next(self.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = self._torch_class(
                self.input_size, self.hidden_size, **self._config(), device=first.device, dtype=first.dtype
            )
        module.load_state_dict(self.state_dict(), strict=True)
        module.train(self.training)
        return module

    # -- forward -----------------------------------------------------------------------------

    def _layer_function(self, x: Tensor, has_lengths: bool, needs_grad: bool) -> LayerFn:
        """The per-(layer, direction) function for ``self.impl``.

        ``"fast"`` asks ``rnnlab.kernels.layer_function`` with ``training=needs_grad`` (grad
        mode on and some input, state or parameter requires grad: a backward may follow) and
        the options that are on (``options_on``), and falls back to the fused form when it
        answers ``None`` (for an option it lacks it says so in one ``OptionFallbackWarning``).
        In trace mode, the tracer's.
        """
        if self.tracer is not None:
            return self.tracer.layer_function
        if self.impl == "reference":
            return functional.reference_layer
        if self.impl == "fast":
            from rnnlab import kernels

            fn = kernels.layer_function(
                self.mode,
                x.device,
                x.dtype,
                has_lengths=has_lengths,
                has_proj=self.proj_size > 0,
                training=needs_grad,
                options=tuple(self.options_on()),
            )
            if fn is not None:
                return fn
        return functional.fused_layer

    def _call_options(self, layer: int, direction: int, w_hh: Tensor, x: Tensor) -> tuple[Tensor, CellOptions | None]:
        """This call's ``W_hh`` (weight-dropped in training) and :class:`CellOptions` (None when
        no option that the layer function sees is on) for one layer and direction.

        Masks are drawn here, in the order of ``rnnlab/nn/options.py``: weight drop, recurrent
        dropout, zoneout of h, zoneout of c (each only when in use, only in training).
        """
        steps, batch = x.shape[0], x.shape[1]
        train = self.training
        if train and self.weight_drop > 0:
            w_hh = w_hh * dropout_mask(self.weight_drop, tuple(w_hh.shape), w_hh)  # (G*H, H_out)
        on = self.options_on()
        if not any(name != "weight_drop" for name in on):
            return w_hh, None
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        get = lambda n: getattr(self, n + suffix, None)  # noqa: E731
        p_r, (p_h, p_c) = self.recurrent_dropout, self._zoneout
        rec = dropout_mask(p_r, (batch, self._out_size), x) if train and p_r > 0 else None  # (N, H_out)
        z_h = zoneout_mask(p_h, (steps, batch, self._out_size), x) if train and p_h > 0 else p_h  # (L, N, H_out)
        z_c = zoneout_mask(p_c, (steps, batch, self.hidden_size), x) if train and p_c > 0 else p_c  # (L, N, H)
        options = CellOptions(
            gate_activation=self.gate_activation,
            activation=self.activation,
            ln_weight_ih=get("ln_weight_ih"),
            ln_weight_hh=get("ln_weight_hh"),
            ln_weight_c=get("ln_weight_c"),
            ln_bias_c=get("ln_bias_c"),
            weight_peephole=get("weight_peephole"),
            recurrent_mask=rec,
            zoneout_h=z_h,
            zoneout_c=z_c,
        )
        return w_hh, options

    def _check_input(self, x: Tensor, expected_dim: int) -> None:
        name = type(self).__name__
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype:
            raise ValueError(
                f"{name}: input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})"
            )
        if x.device != weight.device:
            raise RuntimeError(
                f"{name}: input and parameter tensors are not on the same device, found input on {x.device} "
                f"and parameters on {weight.device}"
            )
        if x.dim() != expected_dim:
            raise RuntimeError(f"{name}: input must have {expected_dim} dimensions, got {x.dim()}")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )

    def _check_state(self, state: Tensor, expected: tuple[int, int, int], x: Tensor, label: str) -> None:
        name = type(self).__name__
        if tuple(state.shape) != expected:
            raise RuntimeError(f"{name}: Expected {label} size {expected}, got {list(state.shape)}")
        if state.dtype != x.dtype:
            raise RuntimeError(f"{name}: {label} dtype ({state.dtype}) does not match input dtype ({x.dtype})")
        if state.device != x.device:
            raise RuntimeError(
                f"{name}: {label} is on {state.device} but input is on {x.device}; they must be on the same device"
            )

    def _initial_states(self, hx: Any, x: Tensor, batch: int) -> tuple[Tensor, Tensor | None]:
        """(h0, c0) with shapes (D*layers, N, H_out) and (D*layers, N, H) (c0 None unless LSTM)."""
        name = type(self).__name__
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h_shape = (layers, batch, self._out_size)
        c_shape = (layers, batch, self.hidden_size)
        if self.mode == "lstm":
            if hx is None:
                return x.new_zeros(h_shape), x.new_zeros(c_shape)
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}")
            h0, c0 = hx
            self._check_state(h0, h_shape, x, "hidden[0]")
            self._check_state(c0, c_shape, x, "hidden[1]")
            return h0, c0
        if hx is None:
            return x.new_zeros(h_shape), None
        if not isinstance(hx, Tensor):
            raise TypeError(f"{name}: hx must be a tensor, got {type(hx).__name__}")
        self._check_state(hx, h_shape, x, "hidden")
        return hx, None

    def _run(
        self, x: Tensor, h0: Tensor, c0: Tensor | None, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The stack: x (L, N, H_in) time-major -> (out (L, N, D*H_out), h_n (D*layers, N, H_out), c_n)."""
        directions = 2 if self.bidirectional else 1
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad
            or h0.requires_grad
            or (c0 is not None and c0.requires_grad)
            or any(p.requires_grad for p in self.parameters())
        )
        layer_fn = self._layer_function(x, lengths is not None, needs_grad)
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        layer_input = x.contiguous()
        for layer in range(self.num_layers):
            outs = []
            for direction in range(directions):
                k = layer * directions + direction
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_weights(layer, direction)
                w_hh, options = self._call_options(layer, direction, w_hh, layer_input)
                out, h, c = layer_fn(
                    self.mode,
                    layer_input,
                    h0[k],
                    None if c0 is None else c0[k],
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                    w_hr,
                    direction == 1,
                    lengths,
                    options=options,
                )
                outs.append(out)  # (L, N, H_out)
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=2)  # (L, N, D*H_out)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n) if c_n else None

    def forward(
        self, input: Tensor | PackedSequence, hx: Any = None, *, lengths: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Any]:
        """Run the recurrent stack (shapes as in torch.nn; see the class docstring)."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(f"{name}: lengths must be None for PackedSequence input (the lengths are in the pack)")
            return self._forward_packed(input, hx)
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        if self.mode == "lstm" and hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        states = () if hx is None else (tuple(hx) if self.mode == "lstm" else (hx,))
        for s in states:
            if not isinstance(s, Tensor):
                raise TypeError(f"{name}: hx must hold tensors, got {type(s).__name__}")
        want = 3 if batched else 2
        if any(s.dim() != want for s in states):
            got = ", ".join(f"{s.dim()}-D" for s in states)
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"{name}: For {kind} input, hx should also be {want}-D but got ({got}) tensor(s)")
        if not batched:
            if lengths is not None:
                raise ValueError(f"{name}: lengths is only supported for batched (3-D) input, got unbatched 2-D input")
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = tuple(s.unsqueeze(1) for s in hx) if self.mode == "lstm" else hx.unsqueeze(1)
        self._check_input(input, 3)
        x = input.transpose(0, 1) if self.batch_first else input  # (L, N, H_in)
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise RuntimeError(
                f"{name}: Expected sequence length to be larger than 0, got input of shape {tuple(input.shape)}"
            )
        h0, c0 = self._initial_states(hx, x, batch)
        if lengths is not None:
            lengths = _check_lengths(name, lengths, batch, steps).to(x.device)
        out, h_n, c_n = self._run(x, h0, c0, lengths)
        if self.batch_first:
            out = out.transpose(0, 1)  # (N, L, D*H_out)
        if not batched:
            out = out.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        return out, ((h_n, c_n) if self.mode == "lstm" else h_n)

    def _forward_packed(self, packed: PackedSequence, hx: Any) -> tuple[PackedSequence, Any]:
        """PackedSequence in, PackedSequence out: unpack to a sorted padded batch with lengths."""
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        self._check_input(data, 2)
        batch = int(batch_sizes[0])
        steps = batch_sizes.numel()
        h0, c0 = self._initial_states(hx, data, batch)
        if sorted_indices is not None:  # states follow the user's order; the pack is sorted
            h0 = h0.index_select(1, sorted_indices)
            c0 = None if c0 is None else c0.index_select(1, sorted_indices)
        # present[t, k]: sequence k (sorted order) has a step t; the pack lists these row-major.
        present = torch.arange(batch).unsqueeze(0) < batch_sizes.unsqueeze(1)  # (L, N), CPU
        lengths = present.sum(0).to(data.device)  # (N,), sorted order
        present = present.to(data.device)
        x = data.new_zeros(steps, batch, data.shape[1])
        x = x.index_put((present,), data) if data.numel() else x  # (L, N, H_in)
        out, h_n, c_n = self._run(x, h0, c0, lengths)
        out_packed = PackedSequence(
            out[present], batch_sizes, sorted_indices, unsorted_indices
        )  # (sum(lengths), D*H_out)
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
            c_n = None if c_n is None else c_n.index_select(1, unsorted_indices)
        return out_packed, ((h_n, c_n) if self.mode == "lstm" else h_n)


_SHAPES_DOC = r"""
    Inputs: ``input, hx=None, *, lengths=None``

    * ``input``: ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first=True``, ``(L, H_in)``
      unbatched, or a ``PackedSequence`` (then the output is a ``PackedSequence``).
    * ``h_0``: ``(D * num_layers, N, H_out)`` (``(D * num_layers, H_out)`` unbatched); zeros if omitted.
    * ``lengths``: optional ``(N,)`` integer tensor for padded batched input; the result equals
      running each sequence on its first ``lengths[k]`` steps alone: outputs at padded steps are
      zero, ``h_n`` holds each sequence's own last state, the reverse direction starts at the
      last real step.

    Outputs: ``output`` ``(L, N, D * H_out)`` (batch_first / unbatched / packed like the input)
    and ``h_n`` ``(D * num_layers, N, H_out)``.

    ``D`` = 2 if bidirectional else 1. ``impl``: ``"fast"`` (default: ``rnnlab.kernels`` when it
    has a kernel for the case, else ``"fused"``), ``"fused"`` (one input GEMM per layer, one
    ``addmm`` per step) or ``"reference"`` (the equations one gate at a time).

    Options beyond torch.nn (keywords, all off by default; equations in ``rnnlab/nn/options.py``):
    ``layer_norm`` (bool: per-gate-block layer norm of the input and recurrent products, and of
    the LSTM cell state before its nonlinearity; parameters ``ln_weight_ih_l{k}``,
    ``ln_weight_hh_l{k}``, LSTM ``ln_weight_c_l{k}``, ``ln_bias_c_l{k}``), ``recurrent_dropout``
    (p: one mask per sequence, layer and direction on ``h_{t-1}`` in the recurrent product),
    ``zoneout`` (p, or ``(p_h, p_c)`` for LSTM: each unit keeps its previous value with
    probability p; the expectation in eval), ``weight_drop`` (p: DropConnect on ``W_hh``, one mask
    per forward call), and for LSTM/GRU ``gate_activation`` / ``activation`` (one of
    ``rnnlab.nn.options.ACTIVATIONS``) and for LSTM ``peephole`` (bool: ``weight_peephole_l{k}``,
    3*H). Dropout-type options act in training only (``.train()``), masks drawn from torch's
    global generator. ``impl="fast"`` runs all of them in the compiled CPU loops; a fast path
    without a kernel for one (GPU, or no compiler) runs the fused form, with one
    ``OptionFallbackWarning`` per forward.
"""


class RNN(RNNBase):
    __doc__ = (
        r"""Elman RNN, a drop-in for ``torch.nn.RNN``. Per layer and step:

    .. math::
        h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),
        \qquad \phi = \tanh \text{ or ReLU}

    ``x_t`` (N, H_in) is the input (the previous layer's output, after dropout in training,
    for layers > 0), ``h_t`` (N, H) the hidden state; ``W_ih`` (H, H_in), ``W_hh`` (H, H).
    """
        + _SHAPES_DOC
        + r"""
    Example::

        >>> rnn = RNN(10, 20, num_layers=2, nonlinearity="relu")
        >>> out, h_n = rnn(torch.randn(5, 3, 10))   # out (5, 3, 20), h_n (2, 3, 20)
    """
    )

    _torch_class = nn.RNN

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
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
        _reject_kwargs("RNN", kwargs)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            "rnn_" + nonlinearity,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
            impl=impl,
            layer_norm=layer_norm,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            weight_drop=weight_drop,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"


class LSTM(RNNBase):
    __doc__ = (
        r"""Long short-term memory, a drop-in for ``torch.nn.LSTM``. Per layer and step:

    .. math::
        i_t &= \sigma(x_t W_{ii}^T + b_{ii} + h_{t-1} W_{hi}^T + b_{hi}) \\
        f_t &= \sigma(x_t W_{if}^T + b_{if} + h_{t-1} W_{hf}^T + b_{hf}) \\
        g_t &= \tanh(x_t W_{ig}^T + b_{ig} + h_{t-1} W_{hg}^T + b_{hg}) \\
        o_t &= \sigma(x_t W_{io}^T + b_{io} + h_{t-1} W_{ho}^T + b_{ho}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot \tanh(c_t) \quad (\text{then } h_t W_{hr}^T \text{ if proj\_size} > 0)

    ``W_ih`` (4H, H_in) and ``W_hh`` (4H, H_out) stack the gates in the order i, f, g, o;
    ``W_hr`` (P, H) is the projection, ``H_out`` = P if ``proj_size`` > 0 else H.
    ``hx`` is a tuple ``(h_0, c_0)``; ``c_0`` has shape ``(D * num_layers, N, H)``; the output
    is ``(output, (h_n, c_n))``.
    """
        + _SHAPES_DOC
        + r"""
    Example::

        >>> lstm = LSTM(10, 20, batch_first=True)
        >>> out, (h_n, c_n) = lstm(torch.randn(3, 5, 10))   # out (3, 5, 20), h_n (1, 3, 20)
    """
    )

    _torch_class = nn.LSTM

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
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
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
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


class GRU(RNNBase):
    __doc__ = (
        r"""Gated recurrent unit, a drop-in for ``torch.nn.GRU``. Per layer and step:

    .. math::
        r_t &= \sigma(x_t W_{ir}^T + b_{ir} + h_{t-1} W_{hr}^T + b_{hr}) \\
        z_t &= \sigma(x_t W_{iz}^T + b_{iz} + h_{t-1} W_{hz}^T + b_{hz}) \\
        n_t &= \tanh(x_t W_{in}^T + b_{in} + r_t \odot (h_{t-1} W_{hn}^T + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    ``W_ih`` (3H, H_in) and ``W_hh`` (3H, H) stack the gates in the order r, z, n; the reset
    gate multiplies ``h W_hn^T + b_hn`` (bias included), as torch and cuDNN do.
    """
        + _SHAPES_DOC
        + r"""
    Example::

        >>> gru = GRU(10, 20, bidirectional=True)
        >>> out, h_n = gru(torch.randn(5, 3, 10))   # out (5, 3, 40), h_n (2, 3, 20)
    """
    )

    _torch_class = nn.GRU

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
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
        _reject_kwargs("GRU", kwargs)
        super().__init__(
            "gru",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
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
