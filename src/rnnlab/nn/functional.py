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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MODES",
    "GATES",
    "fused_layer",
    "reference_layer",
    "rnn_cell_reference",
    "lstm_cell_reference",
    "gru_cell_reference",
    "cell_fused",
]

#: The layer modes and their number of gates ``G``.
GATES: dict[str, int] = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
MODES = tuple(GATES)

LayerResult = tuple[Tensor, Tensor, Tensor | None]


def _check_mode(mode: str) -> None:
    if mode not in GATES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")


def _scan(
    step: Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor | None]],
    inputs: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    reverse: bool,
    lengths: Tensor | None,
) -> LayerResult:
    """Run ``step(inputs[t], h, c) -> (h_new, c_new)`` over time, masking padded steps by ``lengths``.

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
            h, c = step(xs[t], h, c)
            outs[t] = h
    else:
        # valid[t, k]: step t is a real step of sequence k.
        valid = torch.arange(steps, device=h0.device).unsqueeze(1) < lengths.to(h0.device).unsqueeze(0)  # (L, N)
        valid = valid.unsqueeze(2)  # (L, N, 1)
        for t in order:
            h_new, c_new = step(xs[t], h, c)
            m = valid[t]  # (N, 1)
            h = torch.where(m, h_new, h)
            if c is not None:
                c = torch.where(m, c_new, c)
            outs[t] = h_new.masked_fill(~m, 0.0)
    return torch.stack(outs), h, c  # (L, N, H_out)


# ----------------------------------------------------------------------------------------
# Reference form: one gate at a time
# ----------------------------------------------------------------------------------------


def _gate(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, k: int, size: int
) -> Tensor:
    """Pre-activation of gate ``k``: ``x W_ik^T + b_ik + h W_hk^T + b_hk``  (N, H)."""
    rows = slice(k * size, (k + 1) * size)
    return F.linear(x, w_ih[rows], None if b_ih is None else b_ih[rows]) + F.linear(
        h, w_hh[rows], None if b_hh is None else b_hh[rows]
    )


def rnn_cell_reference(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    nonlinearity: str = "tanh",
) -> Tensor:
    r"""Elman RNN cell, :math:`h' = \phi(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})`.

    ``phi`` is tanh or ReLU. Shapes: x (N, H_in), h (N, H) -> h' (N, H). The RNN has no gates:
    it takes the ``gates`` keyword of the other reference cells only to share the scan.
    """
    a = _gate(x, h, w_ih, w_hh, b_ih, b_hh, 0, w_hh.shape[0])
    if nonlinearity == "tanh":
        return torch.tanh(a)
    if nonlinearity == "relu":
        return torch.relu(a)
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def lstm_cell_reference(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
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

    Shapes: x (N, H_in), h (N, H_out), c (N, H) -> h' (N, H_out), c' (N, H).
    ``gates``: a dict that receives ``i``, ``f``, ``g``, ``o`` (N, H) when given (trace mode,
    ``rnnlab.nn.tracing``).
    """
    size = c.shape[1]
    i = torch.sigmoid(_gate(x, h, w_ih, w_hh, b_ih, b_hh, 0, size))
    f = torch.sigmoid(_gate(x, h, w_ih, w_hh, b_ih, b_hh, 1, size))
    g = torch.tanh(_gate(x, h, w_ih, w_hh, b_ih, b_hh, 2, size))
    o = torch.sigmoid(_gate(x, h, w_ih, w_hh, b_ih, b_hh, 3, size))
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()  # (N, P)
    if gates is not None:
        gates.update(i=i, f=f, g=g, o=o)
    return h_new, c_new


def gru_cell_reference(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    *,
    gates: dict[str, Tensor] | None = None,
) -> Tensor:
    r"""GRU cell, gate by gate (torch's order r, z, n and torch's reset placement)::

        r  = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)          reset gate
        z  = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)          update gate
        n  = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))       candidate
        h' = (1 - z) * n + z * h

    The reset gate multiplies ``h W_hn^T + b_hn`` (bias included), as in torch and cuDNN.
    Shapes: x (N, H_in), h (N, H) -> h' (N, H). ``gates``: a dict that receives ``r``, ``z``,
    ``n`` (N, H) when given (trace mode, ``rnnlab.nn.tracing``).
    """
    size = h.shape[1]
    r = torch.sigmoid(_gate(x, h, w_ih, w_hh, b_ih, b_hh, 0, size))
    z = torch.sigmoid(_gate(x, h, w_ih, w_hh, b_ih, b_hh, 1, size))
    rows = slice(2 * size, 3 * size)
    x_n = F.linear(x, w_ih[rows], None if b_ih is None else b_ih[rows])
    h_n = F.linear(h, w_hh[rows], None if b_hh is None else b_hh[rows])
    n = torch.tanh(x_n + r * h_n)
    if gates is not None:
        gates.update(r=r, z=z, n=n)
    return (1 - z) * n + z * h


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
    *,
    trace: list[dict[str, Tensor]] | None = None,
) -> LayerResult:
    """One layer and direction with the reference cells, one step and one gate at a time.

    x (L, N, H_in), h0 (N, H_out), c0 (N, H) or None -> (out (L, N, H_out), h_n, c_n).
    ``trace`` (trace mode, ``rnnlab.nn.tracing``): a list that receives one dict per step, in
    the order the steps run (from ``L - 1`` down to 0 when ``reverse``): the cell's gates and
    its new states ``h`` (N, H_out) and ``c`` (N, H, LSTM only), before any padding mask.
    """
    _check_mode(mode)
    if mode == "lstm":

        def cell(x_t: Tensor, h: Tensor, c: Tensor | None, gates: dict | None) -> tuple[Tensor, Tensor | None]:
            return lstm_cell_reference(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, gates=gates)  # type: ignore[arg-type]

    elif mode == "gru":

        def cell(x_t: Tensor, h: Tensor, c: Tensor | None, gates: dict | None) -> tuple[Tensor, Tensor | None]:
            return gru_cell_reference(x_t, h, w_ih, w_hh, b_ih, b_hh, gates=gates), None

    else:
        nonlinearity = mode[4:]

        def cell(x_t: Tensor, h: Tensor, c: Tensor | None, gates: dict | None) -> tuple[Tensor, Tensor | None]:
            return rnn_cell_reference(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity), None

    def step(x_t: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if trace is None:
            return cell(x_t, h, c, None)
        record: dict[str, Tensor] = {}
        h_new, c_new = cell(x_t, h, c, record)
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
) -> tuple[Tensor, Tensor | None]:
    """One cell step with the fused gate block: x (N, H_in), h (N, H_out), c (N, H) or None."""
    _check_mode(mode)
    gi = F.linear(x, w_ih, b_ih)  # (N, G*H)
    return _fused_step(mode, gi, h, c, w_hh, b_hh, w_hr)


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
) -> LayerResult:
    """One layer and direction: ``x W_ih^T + b`` for all steps in one GEMM, then per step one
    ``addmm`` of ``h W_hh^T`` into the gate block, ``chunk`` and the activations.

    For RNN and LSTM both biases are folded into the input projection; GRU keeps ``b_hh``
    in the step since the reset gate multiplies ``h W_hn^T + b_hn``.
    x (L, N, H_in), h0 (N, H_out), c0 (N, H) or None -> (out (L, N, H_out), h_n, c_n).
    """
    _check_mode(mode)
    steps, batch, _ = x.shape
    step_bias = b_hh
    bias = b_ih
    if mode != "gru" and b_ih is not None and b_hh is not None:
        bias, step_bias = b_ih + b_hh, None
    elif mode != "gru" and b_ih is None and b_hh is not None:
        bias, step_bias = b_hh, None
    gi = F.linear(x.reshape(steps * batch, x.shape[2]), w_ih, bias).view(steps, batch, w_ih.shape[0])  # (L, N, G*H)

    def step(gi_t: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return _fused_step(mode, gi_t, h, c, w_hh, step_bias, w_hr)

    return _scan(step, gi, h0, c0 if mode == "lstm" else None, reverse, lengths)
