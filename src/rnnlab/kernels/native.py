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

Cell options (``options=``, a :class:`rnnlab.nn.options.CellOptions`; every option of the cell):
the ``*_opt`` ops, the same loops with the options' per-step work in C++ (the layer norms of
the input and recurrent products, forward and backward, included: the backward loop returns
the products' gradients ``dP_x``, ``dP_h`` before the norm and the gains' gradients). Here: the
masks put in the sorted batch order; after the backward loop ``dX = dP_x W_ih``,
``dW_ih = dP_x^T X``, ``dW_hh = dP_h^T (H_prev * m)`` (recurrent dropout ``m``) and the
peepholes' ``sum dA_i c_{t-1}``, ``sum dA_f c_{t-1}``, ``sum dA_o c~_t``. Extra saved tensors: ``phi(y_t)`` (LSTM), ``c~_t`` (peepholes),
``y~_t`` (RNN with zoneout), the normalised products and their ``1/std`` (layer norm).
"""

from __future__ import annotations

from typing import NamedTuple

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
    active = options is not None and options.active
    if active:
        from rnnlab.nn.functional import check_options  # the cell-option checks (lazy: nn imports kernels)

        check_options(mode, options)
    weights = (w_ih, w_hh, b_ih, b_hh) + (_option_tensors(options) if active else ())
    call = bptt.prepare_layer(mode, x, h0, c0, weights, w_hr, lengths)
    if call.x.device.type != "cpu":
        raise ValueError(f"rnnlab.kernels.native: CPU tensors expected, got {call.x.device}")
    with _ThreadsAtMostCores():
        if active:
            out, h_n, c_n = _run_options(mode, call, w_ih, w_hh, b_ih, b_hh, reverse, options)
        else:
            out, h_n, c_n = _run(mode, call, w_ih, w_hh, b_ih, b_hh, reverse)
    return bptt.restore_order(call.inv, out, h_n, c_n)


def _option_tensors(opt: CellOptions) -> tuple[Tensor | None, ...]:
    """The options' parameters (gains, biases, peepholes): whether any needs grad decides autograd."""
    return (opt.ln_weight_ih, opt.ln_weight_hh, opt.ln_weight_c, opt.ln_bias_c, opt.weight_peephole)


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


# --------------------------------------------------------------------------------------------
# Cell options (issue 13): the *_opt ops. Python does what runs once per call: the masks in the
# sorted batch order and the weight gradients after the loop; the time loops (with both layer
# norms, forward and backward) are in C++ (rnn_cpu.cpp).
# --------------------------------------------------------------------------------------------

#: The codes of the nonlinearities in the C++ ops (``enum Act`` in rnn_cpu.cpp).
ACTIVATION_CODES = {"sigmoid": 0, "hard_sigmoid": 1, "tanh": 2, "hard_tanh": 3, "relu": 4}


class _Masks(NamedTuple):
    """The options' masks in the sorted batch order, as the C++ ops take them: ``rmask`` (N, H)
    or None; ``zh``, ``zc`` the zoneout keep-masks (L, N, H), a one-element tensor holding ``p``
    (eval), or None."""

    rmask: Tensor | None
    zh: Tensor | None
    zc: Tensor | None


def _sorted_masks(options: CellOptions, perm: Tensor | None, like: Tensor) -> _Masks:
    def rows(t: Tensor | None, dim: int) -> Tensor | None:
        if t is None:
            return None
        t = t.to(like.dtype)
        return (t if perm is None else t.index_select(dim, perm)).contiguous()

    def zone(value: Tensor | float) -> Tensor | None:
        if isinstance(value, Tensor):
            return rows(value, 1)
        return torch.tensor([value], dtype=like.dtype) if value > 0 else None

    return _Masks(rows(options.recurrent_mask, 0), zone(options.zoneout_h), zone(options.zoneout_c))


def _projection_grads(dP_x, dP_h, x, out, h0, w_ih, rmask, needs, reverse, sched, gru=False):
    """(dX, dW_ih, dW_hh) from the gradients of the input products ``dP_x`` (L, N, G*H, the
    order of W_ih's rows) and of the recurrent products ``dP_h`` (the order of W_hh's rows; GRU:
    z, r, n), all steps at once; the recurrent product saw ``h_{t-1} * m`` (recurrent dropout).
    ``needs``: (x, w_ih, w_hh)."""
    steps, n, gh = dP_x.shape
    a2 = dP_x.reshape(steps * n, gh)
    dx = torch.mm(a2, w_ih).view(steps, n, -1) if needs[0] else None
    dw_ih = torch.mm(a2.t(), x.reshape(steps * n, -1)) if needs[1] else None
    dw_hh = None
    if needs[2]:
        states, first = (out, h0) if rmask is None else (out * rmask, h0 * rmask)
        if not gru:
            dw_hh = bptt.hh_weight_grad(dP_h, states, first, reverse, sched)
        else:
            hid = h0.shape[1]
            prev = bptt.prev_states(states, first, reverse, sched)
            m = torch.mm(dP_h.reshape(steps * n, 3 * hid).t(), prev.reshape(steps * n, hid))  # rows z, r, n
            dw_hh = torch.cat((m[hid : 2 * hid], m[:hid], m[2 * hid :]))
    return dx, dw_ih, dw_hh


def _gain_grads(extras, ln_hh, nb_ih: bool, nb_hh: bool):
    """The layer-norm gains' gradients (ln_ih, ln_hh) the backward op summed, where needed."""
    if ln_hh is None:
        return None, None
    return (extras[0] if nb_ih else None), (extras[1] if nb_hh else None)


class _LSTMOptFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c, ln_cb, peep, masks, codes, reverse, sched):
        bs, parts, macs = _loop_args(sched)
        out, h_n, c_n, gates, c_all, saved = _ops().lstm_forward_opt(
            x,
            h0,
            c0,
            w_ih,
            w_hh,
            bptt.sum_bias(b_ih, b_hh),
            bs,
            reverse,
            True,
            parts,
            macs,
            *codes,
            *masks,
            peep,
            ln_ih,
            ln_hh,
            ln_c,
            ln_cb,
        )  # saved: phi(y), c~, the normalised c~ and its 1/std, the normalised products and their 1/std
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, ln_ih, ln_hh, ln_c, ln_cb, peep, out, gates, c_all, *saved)
        ctx.masks, ctx.codes, ctx.reverse, ctx.sched = masks, codes, reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn, grad_cn):
        with _ThreadsAtMostCores():
            return _LSTMOptFunction._backward(ctx, grad_out, grad_hn, grad_cn)

    @staticmethod
    def _backward(ctx, grad_out, grad_hn, grad_cn):
        x, h0, c0, w_ih, w_hh, ln_ih, ln_hh, ln_c, ln_cb, peep, out, gates, c_all, *saved = ctx.saved_tensors
        bs, parts, macs = _loop_args(ctx.sched)
        dA, dh0, dc0, db, (dP_h, cell_sums, dP_x, *gains) = _ops().lstm_backward_opt(
            grad_out,
            grad_hn,
            grad_cn,
            c0,
            w_hh,
            gates,
            c_all,
            saved,
            bs,
            ctx.reverse,
            parts,
            macs,
            *ctx.codes,
            *ctx.masks,
            peep,
            ln_ih,
            ln_hh,
            ln_c,
            ln_cb,
        )  # dA: (L, N, 4H); with layer norm dP_h, dP_x: the products' gradients before it
        nb = ctx.needs_input_grad
        ln = ln_hh is not None
        dx, dw_ih, dw_hh = _projection_grads(
            dP_x if ln else dA,
            dP_h if ln else dA,
            x,
            out,
            h0,
            w_ih,
            ctx.masks.rmask,
            (nb[0], nb[3], nb[4]),
            ctx.reverse,
            ctx.sched,
        )
        dpeep = None
        if peep is not None and nb[11]:
            d4 = dA.view(*dA.shape[:2], 4, -1)
            c_prev = bptt.prev_states(c_all, c0, ctx.reverse, ctx.sched)
            terms = (d4[:, :, 0] * c_prev, d4[:, :, 1] * c_prev, d4[:, :, 3] * saved[1])  # saved[1]: c~
            dpeep = torch.cat([t.sum((0, 1)) for t in terms])
        size = c0.shape[1]
        return (
            dx,
            dh0 if nb[1] else None,
            dc0 if nb[2] else None,
            dw_ih,
            dw_hh,
            db if ctx.has_b[0] and nb[5] else None,
            db if ctx.has_b[1] and nb[6] else None,
            *_gain_grads(gains, ln_hh, nb[7], nb[8]),
            cell_sums[:size] if ln_c is not None and nb[9] else None,
            cell_sums[size:] if ln_cb is not None and nb[10] else None,
            dpeep,
            None,
            None,
            None,
            None,
        )


class _GRUOptFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, masks, codes, reverse, sched):
        bs, parts, macs = _loop_args(sched)
        out, h_n, gates, hn_all, saved = _ops().gru_forward_opt(
            x, h0, w_ih, w_hh, b_ih, b_hh, bs, reverse, True, parts, macs, *codes, masks.rmask, masks.zh, ln_ih, ln_hh
        )  # saved (layer norm): the normalised products and their 1/std
        ctx.save_for_backward(x, h0, w_ih, w_hh, ln_ih, ln_hh, out, gates, hn_all, *saved)
        ctx.masks, ctx.codes, ctx.reverse, ctx.sched = masks, codes, reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        with _ThreadsAtMostCores():
            return _GRUOptFunction._backward(ctx, grad_out, grad_hn)

    @staticmethod
    def _backward(ctx, grad_out, grad_hn):
        x, h0, w_ih, w_hh, ln_ih, ln_hh, out, gates, hn_all, *saved = ctx.saved_tensors
        bs, parts, macs = _loop_args(ctx.sched)
        masks = ctx.masks
        dA, dh0, sums, extras = _ops().gru_backward_opt(
            grad_out,
            grad_hn,
            h0,
            bptt.gru_zrn_weight(w_hh),
            out,
            gates,
            hn_all,
            saved,
            bs,
            ctx.reverse,
            parts,
            macs,
            *ctx.codes,
            masks.rmask,
            masks.zh,
            ln_ih,
            ln_hh,
        )  # dA: (L, N, 4H) [dn, dz, dr, dhn]; extras (layer norm): dP_h (z, r, n), dP_x (r, z, n), gains
        nb = ctx.needs_input_grad
        if ln_hh is None:
            prev = bptt.prev_states(out, h0, ctx.reverse, ctx.sched) if nb[3] else out
            if masks.rmask is not None and nb[3]:
                prev = prev * masks.rmask
            dx, dw_ih, dw_hh, db_ih, db_hh = bptt.gru_param_grads(dA, x, prev, w_ih, nb[0], nb[2:6], ctx.has_b, sums)
            return dx, dh0 if nb[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None, None, None
        dP_h, dP_x, *gains = extras
        dx, dw_ih, dw_hh = _projection_grads(
            dP_x, dP_h, x, out, h0, w_ih, masks.rmask, (nb[0], nb[2], nb[3]), ctx.reverse, ctx.sched, gru=True
        )
        _, _, _, db_ih, db_hh = bptt.gru_param_grads(dA, x, out, w_ih, False, (False, False, *nb[4:6]), ctx.has_b, sums)
        dln_ih, dln_hh = _gain_grads(gains, ln_hh, nb[6], nb[7])
        return dx, dh0 if nb[1] else None, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh, None, None, None, None


class _RNNOptFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, masks, relu, reverse, sched):
        bs, parts, macs = _loop_args(sched)
        out, h_n, saved = _ops().rnn_forward_opt(
            x,
            h0,
            w_ih,
            w_hh,
            bptt.sum_bias(b_ih, b_hh),
            relu,
            bs,
            reverse,
            True,
            parts,
            macs,
            masks.rmask,
            masks.zh,
            ln_ih,
            ln_hh,
        )  # saved: y~ (zoneout), the normalised products and their 1/std (layer norm)
        ctx.save_for_backward(x, h0, w_ih, w_hh, ln_ih, ln_hh, out, *saved)
        ctx.masks, ctx.relu, ctx.reverse, ctx.sched = masks, relu, reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        with _ThreadsAtMostCores():
            return _RNNOptFunction._backward(ctx, grad_out, grad_hn)

    @staticmethod
    def _backward(ctx, grad_out, grad_hn):
        x, h0, w_ih, w_hh, ln_ih, ln_hh, out, *saved = ctx.saved_tensors
        bs, parts, macs = _loop_args(ctx.sched)
        masks = ctx.masks
        dA, dh0, db, extras = _ops().rnn_backward_opt(
            grad_out,
            grad_hn,
            w_hh,
            out,
            saved,
            ctx.relu,
            bs,
            ctx.reverse,
            parts,
            macs,
            masks.rmask,
            masks.zh,
            ln_ih,
            ln_hh,
        )
        nb = ctx.needs_input_grad
        ln = ln_hh is not None
        dx, dw_ih, dw_hh = _projection_grads(
            extras[1] if ln else dA,
            extras[0] if ln else dA,
            x,
            out,
            h0,
            w_ih,
            masks.rmask,
            (nb[0], nb[2], nb[3]),
            ctx.reverse,
            ctx.sched,
        )
        db_ih = db if ctx.has_b[0] and nb[4] else None
        db_hh = db if ctx.has_b[1] and nb[5] else None
        dln_ih, dln_hh = _gain_grads(extras[2:], ln_hh, nb[6], nb[7])
        return dx, dh0 if nb[1] else None, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh, None, None, None, None


def _run_options(mode, call, w_ih, w_hh, b_ih, b_hh, reverse, opt: CellOptions):
    """:func:`_run` with cell options (on sorted, checked inputs)."""
    x, h0, c0, sched = call.x, call.h0, call.c0, call.sched
    masks = _sorted_masks(opt, call.perm, x)
    codes = (ACTIVATION_CODES[opt.gate_activation], ACTIVATION_CODES[opt.activation])
    ln = (opt.ln_weight_ih, opt.ln_weight_hh)
    bs, parts, macs = _loop_args(sched)
    c_n: Tensor | None = None
    if mode == "lstm":
        extra = (opt.ln_weight_c, opt.ln_bias_c)
        if call.grad:
            args = (*ln, *extra, opt.weight_peephole, masks, codes, reverse, sched)
            out, h_n, c_n = _LSTMOptFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *args)
        else:
            out, h_n, c_n, _, _, _ = _ops().lstm_forward_opt(
                x,
                h0,
                c0,
                w_ih,
                w_hh,
                bptt.sum_bias(b_ih, b_hh),
                bs,
                reverse,
                False,
                parts,
                macs,
                *codes,
                *masks,
                opt.weight_peephole,
                *ln,
                *extra,
            )
    elif mode == "gru":
        if call.grad:
            out, h_n = _GRUOptFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, *ln, masks, codes, reverse, sched)
        else:
            out, h_n, _, _, _ = _ops().gru_forward_opt(
                x, h0, w_ih, w_hh, b_ih, b_hh, bs, reverse, False, parts, macs, *codes, masks.rmask, masks.zh, *ln
            )
    else:
        relu = mode == "rnn_relu"
        if call.grad:
            out, h_n = _RNNOptFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, *ln, masks, relu, reverse, sched)
        else:
            out, h_n, _ = _ops().rnn_forward_opt(
                x,
                h0,
                w_ih,
                w_hh,
                bptt.sum_bias(b_ih, b_hh),
                relu,
                bs,
                reverse,
                False,
                parts,
                macs,
                masks.rmask,
                masks.zh,
                *ln,
            )
    return out, h_n, c_n
