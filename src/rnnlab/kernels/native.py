"""Recurrent layers whose time loops run compiled (``csrc/rnn_cpu.cpp``), CPU, float32/float64.

The same contract and numbers as :func:`rnnlab.kernels.bptt.layer` (the Python fast path, and
the fallback where the compiled ops cannot be had, see :mod:`rnnlab.kernels.compiled`)::

    layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths) -> (out, h_n, c_n)

What runs where, per layer and direction:

* Python (here): checks, the sort by decreasing length (``bptt.prepare_layer``), the autograd
  ``Function`` per mode, and after the backward loop the gradients of the input and weights,
  one GEMM (or sum) each over all steps (``bptt.weight_grads``, ``bptt.gru_param_grads``);
* C++ (one op call per forward and per backward): the input projection of all steps (training),
  then per step one GEMM and one fused, vectorised pass over the gate block of every running row
  (activations, cell update, output); in backward per step the fused pass that forms the gate
  gradients ``dA_t`` and one GEMM for ``dh_{t-1}``. No grad: the input projection is done per
  step into an ``(N, G*H)`` buffer and nothing is kept for backward.

Threads: the batch rows are split into up to ``min(torch threads, cores)`` spans (and spans of
at most 64 rows), each running the whole time loop on one thread (one fork/join per call). A
single span lets its step GEMM use BLAS threads only above ``bptt.SINGLE_THREAD_MAX_MACS``
multiply-adds.

Saved for backward: LSTM x, h0, c0, weights, out, the gate activations ``(L, N, 4H)`` and
``c_t`` ``(L, N, H)`` (``tanh(c_t)`` is recomputed); GRU x, h0, weights, out, ``r, z, n``
``(L, N, 3H)`` and ``W_hn h + b_hn`` ``(L, N, H)``; RNN x, h0, weights, out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.nn.options import CellOptions

from . import bptt, compiled

__all__ = ["layer"]


def _ops():
    ops = compiled.ops()
    if ops is None:
        raise RuntimeError(
            "rnnlab.kernels.native: the compiled CPU kernels are unavailable or switched off "
            f"({compiled.ENV_VAR}); use rnnlab.kernels.layer_function, which falls back to the Python path"
        )
    return ops


class _ThreadsAtMostCores:
    """Torch threads capped at the cores of this process while alive (restored after).

    ``torch.set_num_threads`` above the core count oversubscribes the cores in every BLAS call
    (the input projections, the weight gradients): with 4 threads on 2 cores an LSTM training
    step at N = H = 128 took 504 ms against 249 ms with 1 thread. The time loops themselves
    never use more spans than cores.
    """

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        self.cores = compiled.cores()
        if self.saved > self.cores:
            torch.set_num_threads(self.cores)

    def __exit__(self, *exc: object) -> None:
        if self.saved > self.cores:
            torch.set_num_threads(self.saved)


def _loop_args(sched: bptt.Schedule | None) -> tuple[list[int], int, int]:
    """(batch sizes per step or [], most threads worth using, SINGLE_THREAD_MAX_MACS)."""
    return (sched.bs if sched is not None else []), compiled.cores(), bptt.SINGLE_THREAD_MAX_MACS


class _LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, sched):
        bs, parts, macs = _loop_args(sched)
        bias = bptt.sum_bias(b_ih, b_hh)
        out, h_n, c_n, gates, c_all = _ops().lstm_forward(x, h0, c0, w_ih, w_hh, bias, bs, reverse, True, parts, macs)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, out, gates, c_all)
        ctx.reverse, ctx.sched = reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn, grad_cn):
        with _ThreadsAtMostCores():
            return _LSTMFunction._backward(ctx, grad_out, grad_hn, grad_cn)

    @staticmethod
    def _backward(ctx, grad_out, grad_hn, grad_cn):
        x, h0, c0, w_ih, w_hh, out, gates, c_all = ctx.saved_tensors
        bs, parts, macs = _loop_args(ctx.sched)
        dA, dh0, dc0, db = _ops().lstm_backward(
            grad_out, grad_hn, grad_cn, c0, w_hh, gates, c_all, bs, ctx.reverse, parts, macs
        )  # dA: (L, N, 4H), gates i, f, g, o; db: its column sums
        nb = ctx.needs_input_grad
        needs = (nb[0], nb[3], nb[4], nb[5] or nb[6])
        dx, dw_ih, dw_hh, db = bptt.weight_grads(dA, x, out, h0, w_ih, needs, ctx.reverse, ctx.sched, db)
        return (
            dx,
            dh0 if nb[1] else None,
            dc0 if nb[2] else None,
            dw_ih,
            dw_hh,
            db if ctx.has_b[0] and nb[5] else None,
            db if ctx.has_b[1] and nb[6] else None,
            None,
            None,
        )


class _GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, reverse, sched):
        bs, parts, macs = _loop_args(sched)
        out, h_n, gates, hn_all = _ops().gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, bs, reverse, True, parts, macs)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out, gates, hn_all)
        ctx.reverse, ctx.sched = reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        with _ThreadsAtMostCores():
            return _GRUFunction._backward(ctx, grad_out, grad_hn)

    @staticmethod
    def _backward(ctx, grad_out, grad_hn):
        x, h0, w_ih, w_hh, out, gates, hn_all = ctx.saved_tensors
        bs, parts, macs = _loop_args(ctx.sched)
        w_zrn = bptt.gru_zrn_weight(w_hh)
        dA, dh0, sums = _ops().gru_backward(
            grad_out, grad_hn, h0, w_zrn, out, gates, hn_all, bs, ctx.reverse, parts, macs
        )  # dA: (L, N, 4H), [dn, dz, dr, dhn]; sums: its column sums
        nb = ctx.needs_input_grad
        prev = bptt.prev_states(out, h0, ctx.reverse, ctx.sched) if nb[3] else out  # h_{t-1}, (L, N, H)
        dx, dw_ih, dw_hh, db_ih, db_hh = bptt.gru_param_grads(dA, x, prev, w_ih, nb[0], nb[2:6], ctx.has_b, sums)
        return dx, dh0 if nb[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, sched):
        bs, parts, macs = _loop_args(sched)
        bias = bptt.sum_bias(b_ih, b_hh)
        out, h_n = _ops().rnn_forward(x, h0, w_ih, w_hh, bias, relu, bs, reverse, parts, macs)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        ctx.relu, ctx.reverse, ctx.sched = relu, reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        with _ThreadsAtMostCores():
            return _RNNFunction._backward(ctx, grad_out, grad_hn)

    @staticmethod
    def _backward(ctx, grad_out, grad_hn):
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        bs, parts, macs = _loop_args(ctx.sched)
        dA, dh0, db = _ops().rnn_backward(grad_out, grad_hn, w_hh, out, ctx.relu, bs, ctx.reverse, parts, macs)
        nb = ctx.needs_input_grad
        needs = (nb[0], nb[2], nb[3], nb[4] or nb[5])
        dx, dw_ih, dw_hh, db = bptt.weight_grads(dA, x, out, h0, w_ih, needs, ctx.reverse, ctx.sched, db)
        db_ih = db if ctx.has_b[0] and nb[4] else None
        db_hh = db if ctx.has_b[1] and nb[5] else None
        return dx, dh0 if nb[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None, None


def layer(
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
    """One layer, one direction, CPU (``docs/ARCHITECTURE.md``): returns ``(out, h_n, c_n)``.

    x: (L, N, H_in); h0: (N, H); c0: (N, H) for LSTM, else None; w_ih: (G*H, H_in);
    w_hh: (G*H, H); b_ih, b_hh: (G*H,) or None; w_hr must be None; lengths: (N,) int64 or
    None. out: (L, N, H), zero at padded steps; h_n, c_n: (N, H). float32/float64 CPU tensors.
    Differentiable (hand-written BPTT) when grad is enabled and any input needs it.
    """
    if options is not None and options.active:  # no compiled kernel for the cell options yet
        return bptt.layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths, options)
    call = bptt.prepare_layer(mode, x, h0, c0, (w_ih, w_hh, b_ih, b_hh), w_hr, lengths)
    if call.x.device.type != "cpu":
        raise ValueError(f"rnnlab.kernels.native: CPU tensors expected, got {call.x.device}")
    with _ThreadsAtMostCores():
        out, h_n, c_n = _run(mode, call, w_ih, w_hh, b_ih, b_hh, reverse)
    return bptt.restore_order(call.inv, out, h_n, c_n)


def _run(mode, call, w_ih, w_hh, b_ih, b_hh, reverse):
    """The layer on sorted, checked inputs: (out, h_n, c_n) in the sorted order."""
    x, h0, c0, sched = call.x, call.h0, call.c0, call.sched
    c_n: Tensor | None = None
    if mode == "lstm":
        if call.grad:
            out, h_n, c_n = _LSTMFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, sched)
        else:
            bs, parts, macs = _loop_args(sched)
            bias = bptt.sum_bias(b_ih, b_hh)
            out, h_n, c_n, _, _ = _ops().lstm_forward(x, h0, c0, w_ih, w_hh, bias, bs, reverse, False, parts, macs)
    elif mode == "gru":
        if call.grad:
            out, h_n = _GRUFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, sched)
        else:
            bs, parts, macs = _loop_args(sched)
            out, h_n, _, _ = _ops().gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, bs, reverse, False, parts, macs)
    else:
        relu = mode == "rnn_relu"
        if call.grad:
            out, h_n = _RNNFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, sched)
        else:
            bs, parts, macs = _loop_args(sched)
            bias = bptt.sum_bias(b_ih, b_hh)
            out, h_n = _ops().rnn_forward(x, h0, w_ih, w_hh, bias, relu, bs, reverse, parts, macs)
    return out, h_n, c_n
