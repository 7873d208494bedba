r"""Recurrent cells and layers as plain tensor functions: the equations, written out.

Two forms of the same computation, tested against ``torch.nn`` and against each other:

* ``reference_*``: the equations line by line, one gate at a time, for reading;
* ``fused_*``: one input projection for all steps of a layer (a single GEMM), then one
  ``addmm`` per step into the whole gate block, ``chunk`` and the activations.

Every layer function has the signature that the modules (and the fast kernels in
``rnnlab.kernels``) share, see ``docs/ARCHITECTURE.md``::

    layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)
        -> (out (L, N, H_out), h_n (N, H_out), c_n (N, H) or None)

Symbols: ``L`` steps, ``N`` batch, ``H_in`` input features, ``H`` hidden size, ``H_out``
output size (``H``, or the LSTM projection size ``P``), ``G`` gates per cell
(1 RNN, 4 LSTM in the order i, f, g, o, 3 GRU in the order r, z, n).

``lengths`` (``(N,)`` int64, on any device) makes the layer run each sequence ``k`` on
its first ``lengths[k]`` steps only, as packing would: its state stops changing after
its last real step (forward) or is ``h0`` until its last real step (reverse), and its
outputs at padded steps are zero.

``options`` (a :class:`rnnlab.nn.options.CellOptions`, or ``None`` for the plain cell) adds
layer norm, recurrent dropout, zoneout, peepholes and other nonlinearities; the equations are
in ``rnnlab/nn/options.py``. With ``options=None`` both forms compute exactly what they
computed before the options existed (the same operations in the same order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .options import ACTIVATIONS, LAYER_NORM_EPS, CellOptions

__all__ = [
    "MODES",
    "GATES",
    "fused_layer",
    "reference_layer",
    "rnn_cell_reference",
    "lstm_cell_reference",
    "gru_cell_reference",
    "cell_fused",
    "check_options",
]

#: The layer modes and their number of gates ``G``.
GATES: dict[str, int] = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
MODES = tuple(GATES)

LayerResult = tuple[Tensor, Tensor, Tensor | None]


def _check_mode(mode: str) -> None:
    if mode not in GATES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")


def _scan(
    step: Callable[[int, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor | None]],
    inputs: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    reverse: bool,
    lengths: Tensor | None,
) -> LayerResult:
    """Run ``step(t, inputs[t], h, c) -> (h_new, c_new)`` over time, masking padded steps by ``lengths``.

    ``inputs`` (L, N, *) is split once with ``unbind`` (its backward is one ``stack``; indexing
    ``inputs[t]`` per step would make each step's backward write a full-size zero tensor).
    """
    xs = inputs.unbind(0)
    steps = len(xs)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    outs: list[Tensor | None] = [None] * steps
    h, c = h0, c0
    if lengths is None:
        for t in order:
            h, c = step(t, xs[t], h, c)
            outs[t] = h
    else:
        # valid[t, k]: step t is a real step of sequence k.
        valid = torch.arange(steps, device=h0.device).unsqueeze(1) < lengths.to(h0.device).unsqueeze(0)  # (L, N)
        valid = valid.unsqueeze(2)  # (L, N, 1)
        for t in order:
            h_new, c_new = step(t, xs[t], h, c)
            m = valid[t]  # (N, 1)
            h = torch.where(m, h_new, h)
            if c is not None:
                c = torch.where(m, c_new, c)
            outs[t] = h_new.masked_fill(~m, 0.0)
    return torch.stack(outs), h, c  # (L, N, H_out)


# ----------------------------------------------------------------------------------------
# Options: checks shared by both forms
# ----------------------------------------------------------------------------------------

#: The plain cell's options (what ``options=None`` means).
PLAIN = CellOptions()


def check_options(mode: str, options: CellOptions | None) -> None:
    """Raise ValueError for options the cell of ``mode`` does not have (peepholes and a cell
    zoneout outside the LSTM, gate/candidate nonlinearities on the RNN)."""
    if options is None:
        return
    if not isinstance(options, CellOptions):
        raise TypeError(f"options must be a rnnlab.nn.options.CellOptions or None, got {type(options).__name__}")
    if mode != "lstm":
        if options.weight_peephole is not None:
            raise ValueError(f"{mode}: peephole weights are only defined for the LSTM, got weight_peephole")
        if options.ln_weight_c is not None or options.ln_bias_c is not None:
            raise ValueError(f"{mode}: the cell-state layer norm (ln_weight_c, ln_bias_c) is only defined for the LSTM")
        if isinstance(options.zoneout_c, Tensor) or options.zoneout_c > 0:
            raise ValueError(f"{mode}: zoneout_c (the cell state's zoneout) is only defined for the LSTM")
    if mode.startswith("rnn_") and (options.gate_activation != "sigmoid" or options.activation != "tanh"):
        raise ValueError(
            f"{mode}: gate_activation and activation are for lstm and gru; the RNN's nonlinearity is its mode "
            f"(rnn_tanh or rnn_relu), got gate_activation={options.gate_activation!r}, activation={options.activation!r}"
        )


def _zone(prev: Tensor, new: Tensor, d: Tensor | float) -> Tensor:
    """Zoneout: ``d * prev + (1 - d) * new`` (``d`` a 0/1 keep-mask in training, ``p`` in eval)."""
    if not isinstance(d, Tensor) and d == 0:
        return new
    return d * prev + (1 - d) * new


# ----------------------------------------------------------------------------------------
# Reference form: one gate at a time
# ----------------------------------------------------------------------------------------


def _layer_norm(v: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    """``LN(v) = gain * (v - mean) / sqrt(var + eps) (+ bias)``, mean and biased variance over
    the last dimension (the H units of one gate block, or of the cell state)."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    y = (v - mean) / torch.sqrt(var + LAYER_NORM_EPS) * gain
    return y if bias is None else y + bias


def _parts(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    k: int,
    size: int,
    opt: CellOptions,
) -> tuple[Tensor, Tensor]:
    """Gate ``k``'s input part ``LN(x W_ik^T) + b_ik`` and recurrent part ``LN(h W_hk^T) + b_hk``
    (each (N, H); without layer norm ``LN`` is the identity)."""
    rows = slice(k * size, (k + 1) * size)
    bi = None if b_ih is None else b_ih[rows]
    bh = None if b_hh is None else b_hh[rows]
    if not opt.layer_norm:
        return F.linear(x, w_ih[rows], bi), F.linear(h, w_hh[rows], bh)
    ax = _layer_norm(F.linear(x, w_ih[rows]), opt.ln_weight_ih[rows])  # type: ignore[index]
    ah = _layer_norm(F.linear(h, w_hh[rows]), opt.ln_weight_hh[rows])  # type: ignore[index]
    return (ax if bi is None else ax + bi), (ah if bh is None else ah + bh)


def _gate(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    k: int,
    size: int,
    opt: CellOptions = PLAIN,
) -> Tensor:
    """Pre-activation of gate ``k``: ``A_k = LN(x W_ik^T) + b_ik + LN(h W_hk^T) + b_hk``  (N, H)."""
    ax, ah = _parts(x, h, w_ih, w_hh, b_ih, b_hh, k, size, opt)
    return ax + ah


def _recurrent_input(h: Tensor, opt: CellOptions) -> Tensor:
    """``h_hat = h * m``: the state entering the recurrent product (recurrent dropout)."""
    return h if opt.recurrent_mask is None else h * opt.recurrent_mask


def rnn_cell_reference(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    nonlinearity: str = "tanh",
    options: CellOptions | None = None,
) -> Tensor:
    r"""Elman RNN cell, :math:`h' = \phi(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})`.

    ``phi`` is tanh or ReLU. With ``options`` (``rnnlab/nn/options.py``)::

        h_hat = h * m                                         recurrent dropout
        h~    = phi(LN(x W_ih^T) + b_ih + LN(h_hat W_hh^T) + b_hh)
        h'    = d * h + (1 - d) * h~                          zoneout

    Shapes: x (N, H_in), h (N, H) -> h' (N, H).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    check_options("rnn_" + nonlinearity, options)
    opt = options or PLAIN
    a = _gate(x, _recurrent_input(h, opt), w_ih, w_hh, b_ih, b_hh, 0, w_hh.shape[0], opt)
    h_new = torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)
    return _zone(h, h_new, opt.zoneout_h)


def lstm_cell_reference(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
    options: CellOptions | None = None,
    *,
    gates: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""LSTM cell, gate by gate (torch's order i, f, g, o)::

        i  = sigmoid(x W_ii^T + b_ii + h W_hi^T + b_hi)      input gate
        f  = sigmoid(x W_if^T + b_if + h W_hf^T + b_hf)      forget gate
        g  = tanh   (x W_ig^T + b_ig + h W_hg^T + b_hg)      candidate cell
        o  = sigmoid(x W_io^T + b_io + h W_ho^T + b_ho)      output gate
        c' = f * c + i * g
        h' = o * tanh(c')            (then h' = h' W_hr^T with a projection)

    With ``options`` (``rnnlab/nn/options.py``; sg = gate_activation, phi = activation)::

        h_hat = h * m                                          recurrent dropout
        A_k   = LN(x W_ik^T) + b_ik + LN(h_hat W_hk^T) + b_hk  per gate k (LN per gate block)
        i  = sg(A_i + w_ci * c)      f = sg(A_f + w_cf * c)     g = phi(A_g)      (peepholes)
        c~ = f * c + i * g
        o  = sg(A_o + w_co * c~)
        h~ = o * phi(LN(c~) + beta_c)                          (then h~ W_hr^T)
        c' = d_c * c + (1 - d_c) * c~     h' = d_h * h + (1 - d_h) * h~       zoneout

    Shapes: x (N, H_in), h (N, H_out), c (N, H) -> h' (N, H_out), c' (N, H).
    ``gates``: a dict that receives the gate values used, ``i``, ``f``, ``g``, ``o`` (N, H),
    when given (trace mode, ``rnnlab.nn.tracing``).
    """
    check_options("lstm", options)
    opt = options or PLAIN
    gate_act, act = ACTIVATIONS[opt.gate_activation], ACTIVATIONS[opt.activation]
    size = c.shape[1]
    h_hat = _recurrent_input(h, opt)
    a_i = _gate(x, h_hat, w_ih, w_hh, b_ih, b_hh, 0, size, opt)
    a_f = _gate(x, h_hat, w_ih, w_hh, b_ih, b_hh, 1, size, opt)
    a_g = _gate(x, h_hat, w_ih, w_hh, b_ih, b_hh, 2, size, opt)
    a_o = _gate(x, h_hat, w_ih, w_hh, b_ih, b_hh, 3, size, opt)
    if opt.weight_peephole is not None:
        w_ci, w_cf, w_co = opt.weight_peephole.chunk(3)
        a_i = a_i + w_ci * c
        a_f = a_f + w_cf * c
    i = gate_act(a_i)
    f = gate_act(a_f)
    g = act(a_g)
    c_new = f * c + i * g
    if opt.weight_peephole is not None:
        a_o = a_o + w_co * c_new
    o = gate_act(a_o)
    c_out = _layer_norm(c_new, opt.ln_weight_c, opt.ln_bias_c) if opt.ln_weight_c is not None else c_new
    h_new = o * act(c_out)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()  # (N, P)
    if gates is not None:
        gates.update(i=i, f=f, g=g, o=o)
    return _zone(h, h_new, opt.zoneout_h), _zone(c, c_new, opt.zoneout_c)


def gru_cell_reference(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    options: CellOptions | None = None,
    *,
    gates: dict[str, Tensor] | None = None,
) -> Tensor:
    r"""GRU cell, gate by gate (torch's order r, z, n and torch's reset placement)::

        r  = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)          reset gate
        z  = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)          update gate
        n  = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))       candidate
        h' = (1 - z) * n + z * h

    The reset gate multiplies ``h W_hn^T + b_hn`` (bias included), as in torch and cuDNN.
    With ``options`` (``rnnlab/nn/options.py``; sg = gate_activation, phi = activation)::

        h_hat = h * m                                            recurrent dropout
        r  = sg(LN(x W_ir^T) + b_ir + LN(h_hat W_hr^T) + b_hr)   (LN per gate block)
        z  = sg(LN(x W_iz^T) + b_iz + LN(h_hat W_hz^T) + b_hz)
        n  = phi(LN(x W_in^T) + b_in + r * (LN(h_hat W_hn^T) + b_hn))
        h~ = (1 - z) * n + z * h                                 (h itself, not h_hat)
        h' = d * h + (1 - d) * h~                                zoneout

    Shapes: x (N, H_in), h (N, H) -> h' (N, H). ``gates``: a dict that receives the gate values
    used, ``r``, ``z``, ``n`` (N, H), when given (trace mode, ``rnnlab.nn.tracing``).
    """
    check_options("gru", options)
    opt = options or PLAIN
    gate_act, act = ACTIVATIONS[opt.gate_activation], ACTIVATIONS[opt.activation]
    size = h.shape[1]
    h_hat = _recurrent_input(h, opt)
    r = gate_act(_gate(x, h_hat, w_ih, w_hh, b_ih, b_hh, 0, size, opt))
    z = gate_act(_gate(x, h_hat, w_ih, w_hh, b_ih, b_hh, 1, size, opt))
    x_n, h_n = _parts(x, h_hat, w_ih, w_hh, b_ih, b_hh, 2, size, opt)
    n = act(x_n + r * h_n)
    if gates is not None:
        gates.update(r=r, z=z, n=n)
    return _zone(h, (1 - z) * n + z * h, opt.zoneout_h)


def reference_layer(
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
    *,
    trace: list[dict[str, Tensor]] | None = None,
) -> LayerResult:
    """One layer and direction with the reference cells, one step and one gate at a time.

    x (L, N, H_in), h0 (N, H_out), c0 (N, H) or None -> (out (L, N, H_out), h_n, c_n).
    ``options``: the layer's :class:`CellOptions` (zoneout masks ``(L, N, .)``) or None.
    ``trace`` (trace mode, ``rnnlab.nn.tracing``): a list that receives one dict per step, in
    the order the steps run (from ``L - 1`` down to 0 when ``reverse``): the gate values the
    cell used (after layer norm, peepholes and its activations) and its new states ``h``
    (N, H_out) and ``c`` (N, H, LSTM only), after zoneout, before any padding mask.
    """
    _check_mode(mode)
    check_options(mode, options)
    at = (lambda t: None) if options is None else options.at_step  # noqa: E731
    if mode == "lstm":

        def cell(t: int, x_t: Tensor, h: Tensor, c: Tensor | None, gates: dict | None) -> tuple[Tensor, Tensor | None]:
            return lstm_cell_reference(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, at(t), gates=gates)  # type: ignore[arg-type]

    elif mode == "gru":

        def cell(t: int, x_t: Tensor, h: Tensor, c: Tensor | None, gates: dict | None) -> tuple[Tensor, Tensor | None]:
            return gru_cell_reference(x_t, h, w_ih, w_hh, b_ih, b_hh, at(t), gates=gates), None

    else:
        nonlinearity = mode[4:]

        def cell(t: int, x_t: Tensor, h: Tensor, c: Tensor | None, gates: dict | None) -> tuple[Tensor, Tensor | None]:
            return rnn_cell_reference(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, at(t)), None  # no gates

    def step(t: int, x_t: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if trace is None:
            return cell(t, x_t, h, c, None)
        record: dict[str, Tensor] = {}
        h_new, c_new = cell(t, x_t, h, c, record)
        record["h"] = h_new
        if c_new is not None:
            record["c"] = c_new
        trace.append(record)
        return h_new, c_new

    return _scan(step, x, h0, c0 if mode == "lstm" else None, reverse, lengths)


# ----------------------------------------------------------------------------------------
# Fused form: one GEMM for the inputs of all steps, one addmm per step
# ----------------------------------------------------------------------------------------


def _fused_step(
    mode: str,
    gi: Tensor,
    h: Tensor,
    c: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """One step from the input gates ``gi`` (N, G*H), which already hold ``b_ih`` and, except
    for GRU, may already hold ``b_hh`` (then pass ``b_hh=None``)."""
    if mode == "gru":
        gh = F.linear(h, w_hh, b_hh)  # (N, 3H)
        size = h.shape[1]
        rz = torch.sigmoid(gi[:, : 2 * size] + gh[:, : 2 * size])  # (N, 2H)
        r, z = rz.chunk(2, 1)
        n = torch.tanh(torch.addcmul(gi[:, 2 * size :], r, gh[:, 2 * size :]))  # (N, H)
        return n + z * (h - n), None  # (1 - z) * n + z * h
    gates = torch.addmm(gi, h, w_hh.t())  # (N, G*H)
    if b_hh is not None:
        gates = gates + b_hh
    if mode == "lstm":
        size = c.shape[1]  # type: ignore[union-attr]
        sig = torch.sigmoid(gates)  # i, f, o used; (N, 4H)
        i, f, _, o = sig.chunk(4, 1)
        g = torch.tanh(gates[:, 2 * size : 3 * size])
        c_new = torch.addcmul(f * c, i, g)
        h_new = o * torch.tanh(c_new)  # (N, H)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()  # (N, P)
        return h_new, c_new
    if mode == "rnn_tanh":
        return torch.tanh(gates), None
    return torch.relu(gates), None


def _block_norm(a: Tensor, gain: Tensor, gates: int) -> Tensor:
    """Layer norm of each of the ``gates`` blocks of ``a`` (..., G*H) on its own, times ``gain`` (G*H,)."""
    shape = a.shape
    size = shape[-1] // gates
    normed = F.layer_norm(a.reshape(*shape[:-1], gates, size), (size,), eps=LAYER_NORM_EPS)  # (..., G, H)
    return normed.reshape(shape) * gain


def _options_step(
    mode: str,
    gi: Tensor,
    h: Tensor,
    c: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    opt: CellOptions,
    d_h: Tensor | float,
    d_c: Tensor | float,
) -> tuple[Tensor, Tensor | None]:
    """One step with options from the input part ``gi`` (N, G*H) (already normalised, holding
    ``b_ih`` and, except for GRU, ``b_hh``: then ``b_hh=None``); ``d_h``, ``d_c``: this step's
    zoneout keep-masks or probabilities."""
    gates = GATES[mode]
    gh = F.linear(_recurrent_input(h, opt), w_hh)  # (N, G*H)
    if opt.layer_norm:
        gh = _block_norm(gh, opt.ln_weight_hh, gates)  # type: ignore[arg-type]
    if b_hh is not None:
        gh = gh + b_hh
    gate_act, act = ACTIVATIONS[opt.gate_activation], ACTIVATIONS[opt.activation]
    if mode == "gru":
        size = h.shape[1]
        r, z = gate_act(gi[:, : 2 * size] + gh[:, : 2 * size]).chunk(2, 1)  # (N, H) each
        n = act(torch.addcmul(gi[:, 2 * size :], r, gh[:, 2 * size :]))
        return _zone(h, n + z * (h - n), d_h), None
    a = gi + gh  # (N, G*H)
    if mode != "lstm":
        return _zone(h, torch.tanh(a) if mode == "rnn_tanh" else torch.relu(a), d_h), None
    a_i, a_f, a_g, a_o = a.chunk(4, 1)  # (N, H) each
    if opt.weight_peephole is not None:
        w_ci, w_cf, w_co = opt.weight_peephole.chunk(3)
        a_i = torch.addcmul(a_i, w_ci, c)  # type: ignore[arg-type]
        a_f = torch.addcmul(a_f, w_cf, c)  # type: ignore[arg-type]
    c_new = torch.addcmul(gate_act(a_f) * c, gate_act(a_i), act(a_g))
    if opt.weight_peephole is not None:
        a_o = torch.addcmul(a_o, w_co, c_new)
    c_out = c_new
    if opt.ln_weight_c is not None:
        c_out = F.layer_norm(c_new, (c_new.shape[1],), opt.ln_weight_c, opt.ln_bias_c, eps=LAYER_NORM_EPS)
    h_new = gate_act(a_o) * act(c_out)  # (N, H)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()  # (N, P)
    return _zone(h, h_new, d_h), _zone(c, c_new, d_c)  # type: ignore[arg-type]


def _input_part(
    mode: str, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, opt: CellOptions
) -> tuple[Tensor, Tensor | None]:
    """``LN(x W_ih^T) + b`` (..., G*H) for all rows of ``x`` (..., H_in) at once, and the bias
    left for the step: RNN and LSTM fold ``b_hh`` in (it is added after the recurrent layer
    norm, a constant), GRU keeps it (the reset gate multiplies ``b_hn``)."""
    gi = F.linear(x, w_ih)
    if opt.layer_norm:
        gi = _block_norm(gi, opt.ln_weight_ih, GATES[mode])  # type: ignore[arg-type]
    bias, step_bias = b_ih, b_hh
    if mode != "gru":
        bias, step_bias = (b_hh if b_ih is None else b_ih if b_hh is None else b_ih + b_hh), None
    return (gi if bias is None else gi + bias), step_bias


def cell_fused(
    mode: str,
    x: Tensor,
    h: Tensor,
    c: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
    options: CellOptions | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One cell step with the fused gate block: x (N, H_in), h (N, H_out), c (N, H) or None.

    ``options``: the step's :class:`CellOptions` (zoneout masks ``(N, .)``) or None.
    """
    _check_mode(mode)
    check_options(mode, options)
    if options is None or not options.active:
        gi = F.linear(x, w_ih, b_ih)  # (N, G*H)
        return _fused_step(mode, gi, h, c, w_hh, b_hh, w_hr)
    gi, step_bias = _input_part(mode, x, w_ih, b_ih, b_hh, options)  # (N, G*H)
    return _options_step(mode, gi, h, c, w_hh, step_bias, w_hr, options, options.zoneout_h, options.zoneout_c)


def fused_layer(
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
) -> LayerResult:
    """One layer and direction: ``x W_ih^T + b`` for all steps in one GEMM, then per step one
    ``addmm`` of ``h W_hh^T`` into the gate block, ``chunk`` and the activations.

    For RNN and LSTM both biases are folded into the input projection; GRU keeps ``b_hh``
    in the step since the reset gate multiplies ``h W_hn^T + b_hn``. With ``options`` (the
    layer's :class:`CellOptions`, zoneout masks ``(L, N, .)``) the input part is layer-normed
    per gate block for all steps at once as well; the step then runs the options' equations.
    x (L, N, H_in), h0 (N, H_out), c0 (N, H) or None -> (out (L, N, H_out), h_n, c_n).
    """
    _check_mode(mode)
    check_options(mode, options)
    if options is not None and options.active:
        return _fused_options_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths, options)
    steps, batch, _ = x.shape
    step_bias = b_hh
    bias = b_ih
    if mode != "gru" and b_ih is not None and b_hh is not None:
        bias, step_bias = b_ih + b_hh, None
    elif mode != "gru" and b_ih is None and b_hh is not None:
        bias, step_bias = b_hh, None
    gi = F.linear(x.reshape(steps * batch, x.shape[2]), w_ih, bias).view(steps, batch, w_ih.shape[0])  # (L, N, G*H)

    def step(t: int, gi_t: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return _fused_step(mode, gi_t, h, c, w_hh, step_bias, w_hr)

    return _scan(step, gi, h0, c0 if mode == "lstm" else None, reverse, lengths)


def _fused_options_layer(
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
    opt: CellOptions,
) -> LayerResult:
    """:func:`fused_layer` with options (see there)."""
    steps, batch, h_in = x.shape
    gi, step_bias = _input_part(mode, x.reshape(steps * batch, h_in), w_ih, b_ih, b_hh, opt)
    gi = gi.view(steps, batch, w_ih.shape[0])  # (L, N, G*H)
    # per-step views of the zoneout masks (unbind: one stack in backward, not L zero tensors)
    zh = opt.zoneout_h.unbind(0) if isinstance(opt.zoneout_h, Tensor) else None
    zc = opt.zoneout_c.unbind(0) if isinstance(opt.zoneout_c, Tensor) else None

    def step(t: int, gi_t: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        d_h = opt.zoneout_h if zh is None else zh[t]
        d_c = opt.zoneout_c if zc is None else zc[t]
        return _options_step(mode, gi_t, h, c, w_hh, step_bias, w_hr, opt, d_h, d_c)

    return _scan(step, gi, h0, c0 if mode == "lstm" else None, reverse, lengths)
