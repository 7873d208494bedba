"""Recurrent layers with hand-written backpropagation through time (any device, tuned on CPU).

One layer, one direction, the signature of ``docs/ARCHITECTURE.md``::

    layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths) -> (out, h_n, c_n)

How the time goes where it should (L steps, batch N, hidden H, G gates):

* forward: the input projections of all steps are one GEMM, ``X W_ih^T + b`` -> ``(L, N, G*H)``,
  written into the buffer that then holds the gates; per step, one ``addmm_`` adds
  ``h_{t-1} W_hh^T`` in place and the activations run in place on slices of that buffer;
* backward (a ``torch.autograd.Function``): every factor that does not depend on the
  recurrence (``o * (1 - tanh(c)^2)``, ``i * (1 - g^2)``...) is computed for all steps at once
  before the loop; per step there remain one GEMM for ``dh_{t-1}`` and two to four pointwise
  ops into a preallocated ``(L, N, G*H)`` gate-gradient buffer ``dA``; after the loop
  ``dW_ih = dA^T X``, ``dW_hh = dA^T H_prev``, ``db = sum(dA)`` and ``dX = dA W_ih`` are one
  GEMM (or sum) each;
* no grad: the same forward loop, saving nothing for backward.

``lengths``: the batch is sorted by decreasing length outside the autograd functions, so that
the sequences still running at step ``t`` are a prefix ``[:b_t]`` of the batch (as in a
``PackedSequence``); each step only computes that prefix, finished sequences keep their state,
padded outputs stay zero, and the reverse direction starts each sequence at its last real step.

LSTM gates are kept in the order ``(o, i, f, g)`` internally (weights rolled by H rows once per
call): one ``sigmoid_`` covers ``o, i, f`` and the three gates multiplied by ``dc`` in backward
are contiguous. Gradients are rolled back to torch's ``(i, f, g, o)``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from rnnlab.nn.options import CellOptions, OptionFallbackWarning

__all__ = ["layer", "MODES"]

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")


# --------------------------------------------------------------------------------------------
# Length schedule
# --------------------------------------------------------------------------------------------


class Schedule:
    """Sequence lengths sorted in decreasing order, as the per-step batch sizes need them.

    ``lens[k]``: length of the k-th (sorted) sequence; ``bs[t]``: number of sequences with
    ``length > t`` (the rows ``[:bs[t]]`` run at step ``t``); ``short``: rows with length < L.
    """

    def __init__(self, lens: list[int], steps: int, device: torch.device) -> None:
        self.lens = lens
        self.steps = steps
        lens_t = torch.tensor(lens, dtype=torch.int64)
        self.bs: list[int] = (lens_t[None, :] > torch.arange(steps)[:, None]).sum(1).tolist()
        short = lens_t < steps
        self.short_rows = torch.nonzero(short).flatten().to(device)  # rows that end before L
        self.short_lens = lens_t[short].to(device)
        self.lens_dev = lens_t.to(device)

    def pad_mask(self, dtype: torch.dtype) -> Tensor:
        """``(L, N, 1)``: 1 at real steps, 0 at padding."""
        t = torch.arange(self.steps, device=self.lens_dev.device)
        return (t[:, None] < self.lens_dev[None, :]).to(dtype).unsqueeze(-1)


def _views(buf: Tensor, sched: Schedule | None, offset: int = 0) -> list[Tensor]:
    """Per-step views of a ``(T, N, ...)`` buffer holding steps ``offset...``, cut to the rows
    running at each step."""
    steps = buf.unbind(0)
    if sched is None:
        return list(steps)
    n = buf.shape[1]
    return [v if b == n else v[:b] for v, b in zip(steps, sched.bs[offset:])]


#: Without grad, the input projections are computed this many steps at a time into one reused
#: buffer (it stays in cache, and no (L, N, G*H) buffer is allocated and first touched).
INFERENCE_CHUNK = 16


class _Gates:
    """The gate buffer of the time loop: ``X W_ih^T + b`` for all steps (``chunk = L``, kept for
    backward) or ``chunk`` steps at a time into one reused buffer (no grad).

    ``step(t)`` returns the views of step t: the whole ``(b_t, G*H)`` row and its G gate blocks.
    """

    def __init__(
        self, x: Tensor, w_ih: Tensor, bias: Tensor | None, sched: Schedule | None, chunk: int, gates: int
    ) -> None:
        self.x, self.w_t, self.bias, self.sched, self.gates = x, w_ih.t(), bias, sched, gates
        steps, n, _ = x.shape
        self.steps, self.chunk = steps, min(chunk, steps)
        if self.chunk == steps:
            self.buf = _input_projection(x, w_ih, bias)  # (L, N, G*H)
            self._fill(0, steps, project=False)
        else:
            self.buf = x.new_empty((self.chunk, n, w_ih.shape[0]))  # (chunk, N, G*H), reused
            self.t0 = self.t1 = -1

    def _fill(self, t0: int, t1: int, project: bool = True) -> None:
        buf = self.buf[: t1 - t0]
        if project:
            x2 = self.x[t0:t1].reshape(-1, self.x.shape[2])  # (T*N, H_in)
            out2 = buf.view(-1, buf.shape[2])  # (T*N, G*H)
            if self.bias is None:
                torch.mm(x2, self.w_t, out=out2)
            else:
                torch.addmm(self.bias, x2, self.w_t, out=out2)
        t, n, gh = buf.shape
        self.rows = _views(buf, self.sched, t0)
        self.blocks = [_views(v, self.sched, t0) for v in buf.view(t, n, self.gates, gh // self.gates).unbind(2)]
        self.t0, self.t1 = t0, t1

    def step(self, t: int, reverse: bool) -> tuple[Tensor, list[Tensor]]:
        if not self.t0 <= t < self.t1:
            if reverse:
                self._fill(max(0, t + 1 - self.chunk), t + 1)
            else:
                self._fill(t, min(self.steps, t + self.chunk))
        k = t - self.t0
        return self.rows[k], [blk[k] for blk in self.blocks]


def prev_states(out: Tensor, s0: Tensor, reverse: bool, sched: Schedule | None) -> Tensor:
    """``(L, N, H)``: the state each step started from (``s0`` at each sequence's first step).

    ``out[t]`` is the state after step t; forward: prev[t] = out[t-1], prev[0] = s0; reverse:
    prev[t] = out[t+1], prev[L-1] = s0, and with lengths prev[len_k - 1, k] = s0[k].
    """
    prev = torch.empty_like(out)
    if reverse:
        prev[:-1] = out[1:]
        prev[-1] = s0
        if sched is not None and sched.short_rows.numel():
            prev[sched.short_lens - 1, sched.short_rows] = s0[sched.short_rows]
    else:
        prev[1:] = out[:-1]
        prev[0] = s0
    return prev


def _start_state(prev_out: Tensor | None, s0: Tensor, b_prev: int, b: int) -> Tensor:
    """State rows for a step: the running rows from the previous step, new rows from ``s0``."""
    if prev_out is None:
        return s0[:b] if b < s0.shape[0] else s0
    if b == b_prev:
        return prev_out
    if b < b_prev:  # forward direction with lengths: sequences that ended drop out
        return prev_out[:b]
    return torch.cat((prev_out, s0[b_prev:b]))  # reverse direction with lengths: rows starting here


def _final_state(out: Tensor, reverse: bool, sched: Schedule | None) -> Tensor:
    """``(N, H)``: each sequence's last state (out[len_k - 1, k] forward, out[0] reverse)."""
    if reverse:
        return out[0]
    if sched is None:
        return out[-1]
    return out[sched.lens_dev - 1, torch.arange(out.shape[1], device=out.device)]


def _order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


#: Time loops whose per-step GEMM has at most this many multiply-adds run on one thread.
#: At these sizes an OpenMP fork/join per step costs more than the split saves, and on shared
#: cores it is ruinous: a 64x64 @ 64x256 step took 0.09-0.17 ms on 1 thread and 1.1-9.6 ms on
#: 2 threads on the 2-core development machine under load (docs/PERFORMANCE.md).
SINGLE_THREAD_MAX_MACS = 1 << 23


class _LoopThreads:
    """Run a time loop on one intra-op thread when its per-step GEMM is small (restores after)."""

    def __init__(self, macs_per_step: int) -> None:
        self.saved = 0
        self.small = macs_per_step <= SINGLE_THREAD_MAX_MACS

    def __enter__(self) -> None:
        if self.small:
            self.saved = torch.get_num_threads()
            if self.saved > 1:
                torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.small and self.saved > 1:
            torch.set_num_threads(self.saved)


class _RunningGrad:
    """dLoss/dh flowing back through the time loop, one ``(N, H)`` buffer instead of ``(L, N, H)``.

    ``rec`` starts as dLoss/dh_n; per step ``step(t)`` returns dh_t = grad_out[t] + rec (rows
    ``[:b_t]``) and ``rec_rows(b)`` is where the step writes dLoss/dh_{t-1}. Rows of sequences that
    are not running keep their value: dh_n until a sequence's last step, dh0 after its first,
    so that ``rec`` ends as dLoss/dh0 for every sequence. Padded steps contribute nothing
    because their gate gradients are zero.
    """

    def __init__(self, grad_out: Tensor, grad_hn: Tensor, sched: Schedule | None) -> None:
        self.n = grad_hn.shape[0]
        self.rec = grad_hn.clone(memory_format=torch.contiguous_format)  # (N, H)
        self.tmp = torch.empty_like(self.rec)  # (N, H)
        self.go = _views(grad_out, sched)

    def rows(self, b: int) -> tuple[Tensor, Tensor]:
        """(dh buffer, rec) cut to the running rows."""
        if b == self.n:
            return self.tmp, self.rec
        return self.tmp[:b], self.rec[:b]

    def step(self, t: int, b: int) -> tuple[Tensor, Tensor]:
        """dh_t = grad_out[t] + rec (returned with the rec rows that receive dh_{t-1})."""
        d, rec = self.rows(b)
        torch.add(self.go[t], rec, out=d)
        return d, rec


def _input_projection(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """``(L, N, G*H) = X W_ih^T + b`` as one GEMM over all steps."""
    steps, n, h_in = x.shape
    x2 = x.reshape(steps * n, h_in)  # (L*N, H_in)
    if bias is None:
        out = torch.mm(x2, w_ih.t())
    else:
        out = torch.addmm(bias, x2, w_ih.t())
    return out.view(steps, n, w_ih.shape[0])


def hh_weight_grad(dA: Tensor, out: Tensor, h0: Tensor, reverse: bool, sched: Schedule | None) -> Tensor:
    """dW_hh = sum_t dA_t^T h_{t-1}, without materialising the shifted states.

    Forward: h_{t-1} = out[t-1] (h0 at t = 0); reverse: out[t+1] (h0 at t = L-1, and at
    t = len_k - 1 for a sequence k shorter than L, where out[len_k] is zero padding).
    """
    steps, n, gh = dA.shape
    hid = out.shape[2]
    first, main, states = (dA[-1], dA[:-1], out[1:]) if reverse else (dA[0], dA[1:], out[:-1])
    dw = torch.mm(first.t(), h0)  # (G*H, H)
    if steps > 1:
        dw.addmm_(main.reshape((steps - 1) * n, gh).t(), states.reshape((steps - 1) * n, hid))
    if reverse and sched is not None and sched.short_rows.numel():
        rows = sched.short_rows
        dw.addmm_(dA[sched.short_lens - 1, rows].t(), h0[rows])
    return dw


def weight_grads(
    dA: Tensor,
    x: Tensor,
    out: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    needs: tuple[bool, bool, bool, bool],
    reverse: bool,
    sched: Schedule | None,
    col_sums: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """dX = dA W_ih, dW_ih = dA^T X, dW_hh = dA^T H_prev, db = sum dA (all steps at once;
    ``col_sums``: db when the caller already has it)."""
    steps, n, gh = dA.shape
    a2 = dA.view(steps * n, gh)  # (L*N, G*H)
    need_x, need_wih, need_whh, need_b = needs
    dx = torch.mm(a2, w_ih).view(steps, n, w_ih.shape[1]) if need_x else None
    dw_ih = torch.mm(a2.t(), x.reshape(steps * n, -1)) if need_wih else None
    dw_hh = hh_weight_grad(dA, out, h0, reverse, sched) if need_whh else None
    db = (a2.sum(0) if col_sums is None else col_sums) if need_b else None
    return dx, dw_ih, dw_hh, db


class _Consts:
    """(N, H) constants for ``lerp``: tanh(a) = lerp(-1, 1, sigmoid(2a)) (= 2 sigmoid(2a) - 1).

    ``torch.tanh`` costs about 4x ``torch.sigmoid`` on CPU; every tanh of the time loop is
    therefore computed from a sigmoid of a doubled argument (the doubling is folded into the
    weights, once per call: exact, a power of two) and one ``lerp``. Error: a few ulp of 1.
    """

    def __init__(self, like: Tensor) -> None:
        self.n = like.shape[0]
        one = torch.ones_like(like)
        self.m1, self.p1, self.m2, self.p2 = -one, one, -2.0 * one, 2.0 * one

    def rows(self, b: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if b == self.n:
            return self.m1, self.p1, self.m2, self.p2
        return self.m1[:b], self.p1[:b], self.m2[:b], self.p2[:b]


def _doubled(w: Tensor | None, start: int, stop: int | None = None) -> Tensor | None:
    """A copy of ``w`` with rows ``[start:stop]`` multiplied by 2 (exact)."""
    if w is None:
        return None
    w = w.clone()
    w[start:stop] *= 2.0
    return w


# --------------------------------------------------------------------------------------------
# Vanilla RNN: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
# --------------------------------------------------------------------------------------------


def _rnn_forward(x, h0, w_ih, w_hh, bias, relu, reverse, sched):
    """Returns out (L, N, H): the pre-activation buffer activated in place (it is the output)."""
    if not relu:  # tanh(a) = lerp(-1, 1, sigmoid(2a)): double the weights once
        w_ih, w_hh, bias = _doubled(w_ih, 0), _doubled(w_hh, 0), _doubled(bias, 0)
    out = _input_projection(x, w_ih, bias)  # (L, N, H) pre-activations
    steps, n, _ = out.shape
    rows = _views(out, sched)
    w_t = w_hh.t()  # (H, H)
    consts = _Consts(h0)
    prev: Tensor | None = None
    b_prev = n
    with _LoopThreads(w_hh.numel() * n):
        for t in _order(steps, reverse):
            a = rows[t]  # (b, H)
            b = a.shape[0]
            h = _start_state(prev, h0, b_prev, b)
            a.addmm_(h, w_t)
            if relu:
                a.relu_()
            else:
                m1, p1, _, _ = consts.rows(b)
                a.sigmoid_()
                torch.lerp(m1, p1, a, out=a)
            prev, b_prev = a, b
    if sched is not None:
        out.mul_(sched.pad_mask(out.dtype))  # padded steps never ran: zero them
    return out


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, sched):
        out = _rnn_forward(x, h0, w_ih, w_hh, sum_bias(b_ih, b_hh), relu, reverse, sched)
        h_n = _final_state(out, reverse, sched)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        ctx.relu, ctx.reverse, ctx.sched = relu, reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n.clone()

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        reverse, sched = ctx.reverse, ctx.sched
        steps, n, _ = out.shape
        # dA starts as d act / d pre (relu: 1[h > 0]; tanh: 1 - h^2), then per step dA_t *= dh_t
        dA = torch.empty_like(out)  # (L, N, H)
        if ctx.relu:
            torch.sign(out, out=dA)  # out >= 0
        else:
            torch.mul(out, out, out=dA)
            dA.neg_().add_(1.0)
        if sched is not None:
            dA.mul_(sched.pad_mask(dA.dtype))  # padded steps: no gradient
        dA_rows = _views(dA, sched)
        run = _RunningGrad(grad_out, grad_hn, sched)
        with _LoopThreads(w_hh.numel() * n):
            for t in _order(steps, not reverse):
                a = dA_rows[t]
                d, rec = run.step(t, a.shape[0])
                a.mul_(d)
                torch.mm(a, w_hh, out=rec)
        dh0 = run.rec
        nb = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db = weight_grads(dA, x, out, h0, w_ih, (nb[0], nb[2], nb[3], nb[4] or nb[5]), reverse, sched)
        db_ih = db if ctx.has_b[0] and nb[4] else None
        db_hh = db if ctx.has_b[1] and nb[5] else None
        return dx, dh0 if nb[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None, None


# --------------------------------------------------------------------------------------------
# LSTM (internal gate order o, i, f, g)
# --------------------------------------------------------------------------------------------


def _lstm_weights(w_ih, w_hh, bias, hid):
    """Rows rolled to (o, i, f, g), the g rows doubled (g = tanh(a) = lerp(-1, 1, sigmoid(2a)))."""
    return tuple(_doubled(_roll_gates(w, hid), 3 * hid) for w in (w_ih, w_hh, bias))


def _lstm_forward(x, h0, c0, w_ih, w_hh, bias, reverse, sched, save):
    """The LSTM time loop on weights from ``_lstm_weights``.

    Returns out (L, N, H); gates (L, N, 4H) holding o, i, f, 2g; the doubled cell state 2c
    (L, N, H) when ``save`` (else 2 c_n, (N, H)); tanh(c) (L, N, H) when ``save`` (else None).
    The state is kept doubled (exact) so that tanh(c) = lerp(-1, 1, sigmoid(2c)) needs no
    extra multiply: 2c_t = f 2c_{t-1} + i 2g.
    """
    src = _Gates(x, w_ih, bias, sched, x.shape[0] if save else INFERENCE_CHUNK, 4)  # o, i, f, 2a_g
    steps, n, _ = x.shape
    hid = w_hh.shape[1]
    new = torch.zeros if sched is not None else torch.empty
    out = new((steps, n, hid), dtype=x.dtype, device=x.device)  # (L, N, H)
    out_rows = _views(out, sched)
    w_t = w_hh.t()  # (H, 4H)
    consts = _Consts(h0)
    c0_2 = 2.0 * c0  # (N, H)
    if save:
        c_all = new((steps, n, hid), dtype=x.dtype, device=x.device)  # 2 c_t, (L, N, H)
        tc_all = torch.empty_like(c_all)  # tanh(c_t), (L, N, H)
        c_rows, tc_rows = _views(c_all, sched), _views(tc_all, sched)
    else:
        c_state = c0_2  # (N, H), rows updated in place: finished rows keep their state
        tmp = torch.empty_like(c0)
    prev_h: Tensor | None = None
    prev_c: Tensor | None = None
    b_prev = n
    with _LoopThreads(w_hh.numel() * n):
        for t in _order(steps, reverse):
            a, (o, i, f, g2) = src.step(t, reverse)  # (b, 4H) and its four (b, H) blocks
            b = a.shape[0]
            m1, p1, m2, p2 = consts.rows(b)
            h = _start_state(prev_h, h0, b_prev, b)
            a.addmm_(h, w_t)
            a.sigmoid_()  # o, i, f, sigmoid(2 a_g)
            torch.lerp(m2, p2, g2, out=g2)  # 2g = 2 tanh(a_g)
            if save:
                c_prev = _start_state(prev_c, c0_2, b_prev, b)
                c, tc = c_rows[t], tc_rows[t]
                torch.mul(f, c_prev, out=c)
                prev_c = c
            else:
                c = c_state[:b] if b < n else c_state
                tc = tmp[:b] if b < n else tmp
                c.mul_(f)
            c.addcmul_(i, g2)  # 2c
            torch.sigmoid(c, out=tc)
            torch.lerp(m1, p1, tc, out=tc)  # tanh(c)
            h_new = out_rows[t]
            torch.mul(o, tc, out=h_new)
            prev_h, b_prev = h_new, b
    gates = src.buf
    if save:
        return out, gates, c_all, tc_all
    return out, gates, c_state, None


def _roll_gates(w: Tensor | None, hid: int) -> Tensor | None:
    """torch's (i, f, g, o) rows -> (o, i, f, g)."""
    return None if w is None else torch.roll(w, hid, 0)


def _unroll_gates(w: Tensor | None, hid: int) -> Tensor | None:
    """(o, i, f, g) rows -> torch's (i, f, g, o)."""
    return None if w is None else torch.roll(w, -hid, 0)


class _LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, sched):
        hid = h0.shape[1]
        w_ih_p, w_hh_p, bias_p = _lstm_weights(w_ih, w_hh, sum_bias(b_ih, b_hh), hid)
        out, gates, c_all, tc_all = _lstm_forward(x, h0, c0, w_ih_p, w_hh_p, bias_p, reverse, sched, True)
        h_n = _final_state(out, reverse, sched)
        c_n = _final_state(c_all, reverse, sched) * 0.5
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, out, gates, c_all, tc_all)
        ctx.reverse, ctx.sched = reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n.clone(), c_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn, grad_cn):
        x, h0, c0, w_ih, w_hh, out, gates, c_all, tc_all = ctx.saved_tensors
        reverse, sched = ctx.reverse, ctx.sched
        steps, n, hid = out.shape
        w_ih_p, w_hh_p = _roll_gates(w_ih, hid), _roll_gates(w_hh, hid)  # rows o, i, f, g
        o, i, f, g2 = gates.view(steps, n, 4, hid).unbind(2)  # each (L, N, H); g2 = 2g
        # dA (L, N, 4, H) first holds the factors that do not depend on the recurrence:
        #   [o, i, f, g] <- [tanh(c) o (1 - o), g i (1 - i), c_prev f (1 - f), i (1 - g^2)]
        # and per step becomes dA_o = dh * ., dc = dc_next + dh o (1 - tanh(c)^2),
        # dA_ifg = dc * ., dc_prev = dc f.
        dA = torch.empty_like(gates)  # (L, N, 4H)
        dA4 = dA.view(steps, n, 4, hid)
        d_o, d_i, d_f, d_g = dA4.unbind(2)
        torch.mul(o, tc_all, out=d_o)
        d_o.addcmul_(d_o, o, value=-1.0)
        torch.mul(i, g2, out=d_i)
        d_i.addcmul_(d_i, i, value=-1.0).mul_(0.5)
        c_prev = prev_states(c_all, 2.0 * c0, reverse, sched)  # 2 c_{t-1}, (L, N, H)
        torch.mul(f, c_prev, out=d_f)
        del c_prev
        d_f.addcmul_(d_f, f, value=-1.0).mul_(0.5)
        torch.mul(g2, g2, out=d_g)
        d_g.mul_(-0.25).add_(1.0).mul_(i)
        if sched is not None:  # padded steps: no gradient (tanh(c) there is uninitialised)
            dA4.masked_fill_(sched.pad_mask(dA.dtype).unsqueeze(-1) == 0, 0.0)
        dc_from_h = torch.mul(tc_all, tc_all).neg_().add_(1.0).mul_(o)  # o (1 - tanh(c)^2), (L, N, H)
        run = _RunningGrad(grad_out, grad_hn, sched)
        dc = grad_cn.clone(memory_format=torch.contiguous_format)  # (N, H), running dLoss/dc
        dA_o, dA_ifg = _views(dA4[:, :, 0], sched), _views(dA4[:, :, 1:], sched)
        dA_rows = _views(dA, sched)
        dcf_rows, f_rows = _views(dc_from_h, sched), _views(f, sched)
        dc_u = dc.unsqueeze(1)  # (N, 1, H) view of the running dc
        with _LoopThreads(w_hh.numel() * n):
            for t in _order(steps, not reverse):
                a = dA_rows[t]
                b = a.shape[0]
                d, rec = run.step(t, b)
                dcb, dcb_u = (dc, dc_u) if b == n else (dc[:b], dc_u[:b])
                dA_o[t].mul_(d)
                dcb.addcmul_(d, dcf_rows[t])
                dA_ifg[t].mul_(dcb_u)
                dcb.mul_(f_rows[t])
                torch.mm(a, w_hh_p, out=rec)
        dh0 = run.rec
        del dc_from_h
        nb = ctx.needs_input_grad
        needs = (nb[0], nb[3], nb[4], nb[5] or nb[6])
        dx, dw_ih, dw_hh, db = weight_grads(dA, x, out, h0, w_ih_p, needs, reverse, sched)
        db = _unroll_gates(db, hid)
        return (
            dx,
            dh0 if nb[1] else None,
            dc if nb[2] else None,
            _unroll_gates(dw_ih, hid),
            _unroll_gates(dw_hh, hid),
            db if ctx.has_b[0] and nb[5] else None,
            db if ctx.has_b[1] and nb[6] else None,
            None,
            None,
        )


def sum_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    if b_ih is None:
        return b_hh
    if b_hh is None:
        return b_ih
    return b_ih + b_hh


# --------------------------------------------------------------------------------------------
# GRU (torch's order r, z, n; n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)))
# --------------------------------------------------------------------------------------------


def _gru_weights(w_ih, w_hh, b_ih, b_hh, hid):
    """(W_ih with the n rows doubled, W_hh[r, z], 2 W_hn, input-side bias, 2 b_hn).

    The input-side bias is (b_ir + b_hr, b_iz + b_hz, 2 b_in); doubling the n pre-activation
    gives n = tanh(a_n) = lerp(-1, 1, sigmoid(2 a_n)).
    """
    w_x = _doubled(w_ih, 2 * hid)
    b_x = _doubled(b_ih, 2 * hid)
    b_hn = None
    if b_hh is not None:
        b_rz = torch.cat((b_hh[: 2 * hid], torch.zeros_like(b_hh[2 * hid :])))
        b_x = b_rz if b_x is None else b_x + b_rz
        b_hn = 2.0 * b_hh[2 * hid :]
    return w_x, w_hh[: 2 * hid], 2.0 * w_hh[2 * hid :], b_x, b_hn


def _gru_forward(x, h0, weights, reverse, sched, save):
    """The GRU time loop on ``_gru_weights``. Returns out (L, N, H), gates (L, N, 3H) holding
    r, z, n, and 2 hn (L, N, H) with hn = h_{t-1} W_hn^T + b_hn when ``save`` (else None)."""
    w_x, w_rz, w_n, b_x, b_hn = weights
    src = _Gates(x, w_x, b_x, sched, x.shape[0] if save else INFERENCE_CHUNK, 3)  # r, z, 2a_n (input parts)
    steps, n, _ = x.shape
    hid = w_n.shape[0]
    new = torch.zeros if sched is not None else torch.empty
    out = new((steps, n, hid), dtype=x.dtype, device=x.device)  # (L, N, H)
    hn_all = torch.empty_like(out) if save else torch.empty_like(h0)  # (L, N, H) or (N, H)
    out_rows = _views(out, sched)
    hn_rows = _views(hn_all, sched) if save else None
    w_rz_t, w_n_t = w_rz.t(), w_n.t()  # (H, 2H), (H, H)
    consts = _Consts(h0)
    prev_h: Tensor | None = None
    b_prev = n
    with _LoopThreads((w_rz.numel() + w_n.numel()) * n):
        for t in _order(steps, reverse):
            a, (r, z, nn_) = src.step(t, reverse)  # (b, 3H) and its three (b, H) blocks
            b = a.shape[0]
            rz = a[:, : 2 * hid]
            m1, p1, _, _ = consts.rows(b)
            h = _start_state(prev_h, h0, b_prev, b)
            hn = hn_rows[t] if save else (hn_all[:b] if b < n else hn_all)
            rz.addmm_(h, w_rz_t)
            if b_hn is None:
                torch.mm(h, w_n_t, out=hn)
            else:
                torch.addmm(b_hn, h, w_n_t, out=hn)
            rz.sigmoid_()
            nn_.addcmul_(r, hn).sigmoid_()  # sigmoid(2 a_n)
            torch.lerp(m1, p1, nn_, out=nn_)  # n = tanh(a_n)
            h_new = out_rows[t]
            torch.lerp(nn_, h, z, out=h_new)  # n + z (h - n)
            prev_h, b_prev = h_new, b
    gates = src.buf
    return out, gates, hn_all if save else None


class _GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, reverse, sched):
        hid = h0.shape[1]
        weights = _gru_weights(w_ih, w_hh, b_ih, b_hh, hid)
        out, gates, hn_all = _gru_forward(x, h0, weights, reverse, sched, True)
        h_n = _final_state(out, reverse, sched)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out, gates, hn_all)
        ctx.reverse, ctx.sched = reverse, sched
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return out, h_n.clone()

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        x, h0, w_ih, w_hh, out, gates, hn2_all = ctx.saved_tensors
        reverse, sched = ctx.reverse, ctx.sched
        steps, n, hid = out.shape
        r, z, nn_ = gates.view(steps, n, 3, hid).unbind(2)  # each (L, N, H)
        prev = prev_states(out, h0, reverse, sched)  # h_{t-1}, (L, N, H)
        # dA layout (L, N, 4, H): [dn, dz, dr, dhn]. It first holds the factors that do not
        # depend on the recurrence, then is multiplied in place per step:
        #   [dn, dz] = dh * [(1 - z)(1 - n^2), (h_prev - n) z (1 - z)]
        #   [dr, dhn] = dn * [hn r (1 - r), r]          dh_prev = [dz, dr, dhn] W_hh(z, r, n) + dh z
        dA = torch.empty((steps, n, 4, hid), dtype=out.dtype, device=out.device)
        d_n, d_z, d_r, d_hn = dA.unbind(2)
        torch.mul(nn_, nn_, out=d_n)
        d_n.neg_().add_(1.0)
        d_n.addcmul_(d_n, z, value=-1.0)  # (1 - n^2)(1 - z)
        torch.sub(prev, nn_, out=d_z)
        d_z.mul_(z)
        d_z.addcmul_(d_z, z, value=-1.0)  # (h_prev - n) z (1 - z)
        torch.mul(hn2_all, r, out=d_r)
        d_r.addcmul_(d_r, r, value=-1.0).mul_(0.5)  # hn r (1 - r)
        d_hn.copy_(r)
        if sched is not None:  # padded steps: no gradient (hn there is uninitialised)
            dA.masked_fill_(sched.pad_mask(dA.dtype).unsqueeze(-1) == 0, 0.0)
        w_zrn = gru_zrn_weight(w_hh)  # (3H, H) rows z, r, n
        dn_u = dA[:, :, 0:1]  # (L, N, 1, H)
        dnu_rows = _views(dn_u, sched)
        dA_nz, dA_rh = _views(dA[:, :, 0:2], sched), _views(dA[:, :, 2:4], sched)
        dA_hh = _views(dA.view(steps, n, 4 * hid)[:, :, hid:], sched)
        z_rows = _views(z, sched)
        run = _RunningGrad(grad_out, grad_hn, sched)
        with _LoopThreads(w_hh.numel() * n):
            for t in _order(steps, not reverse):
                a = dA_hh[t]
                d, rec = run.step(t, a.shape[0])
                dA_nz[t].mul_(d.unsqueeze(1))
                dA_rh[t].mul_(dnu_rows[t])
                torch.mm(a, w_zrn, out=rec)
                rec.addcmul_(d, z_rows[t])
        dh0 = run.rec
        nb = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db_ih, db_hh = gru_param_grads(dA, x, prev, w_ih, nb[0], nb[2:6], ctx.has_b)
        return dx, dh0 if nb[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None


def gru_param_grads(
    dA: Tensor,
    x: Tensor,
    prev: Tensor,
    w_ih: Tensor,
    need_x: bool,
    needs: tuple[bool, bool, bool, bool],
    has_b: tuple[bool, bool],
    col_sums: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(dX, dW_ih, dW_hh, db_ih, db_hh) of a GRU from its gate gradients, all steps at once.

    dA: (L, N, 4H) or (L, N, 4, H) with columns [dn, dz, dr, dhn] (gradients of the
    pre-activations; dhn of ``h W_hn^T + b_hn``); prev: (L, N, H) the state each step started
    from; ``needs`` says which of (W_ih, W_hh, b_ih, b_hh) need a gradient; ``col_sums``: the
    (4H,) column sums of dA when the caller already has them. Torch's gate order (r, z, n).
    """
    steps, n, hid = prev.shape
    need_wih, need_whh, need_bih, need_bhh = needs
    a2 = dA.view(steps * n, 4 * hid)
    dx = dw_ih = dw_hh = db_ih = db_hh = None
    if col_sums is not None:
        sums = col_sums.view(4, hid)  # dn, dz, dr, dhn
        if need_bih and has_b[0]:
            db_ih = torch.cat((sums[2], sums[1], sums[0]))
        if need_bhh and has_b[1]:
            db_hh = torch.cat((sums[2], sums[1], sums[3]))
        need_bih = need_bhh = False
    if need_x or need_wih or need_bih:
        a_ih = a2[:, : 3 * hid]  # columns n, z, r
        if need_x:
            w_nzr = torch.cat((w_ih[2 * hid :], w_ih[hid : 2 * hid], w_ih[:hid]))
            dx = torch.mm(a_ih, w_nzr).view(steps, n, -1)
        if need_wih:
            dw_ih = torch.mm(a_ih.t(), x.reshape(steps * n, -1)).view(3, hid, -1).flip(0).reshape(3 * hid, -1)
        if need_bih and has_b[0]:
            db_ih = a_ih.sum(0).view(3, hid).flip(0).reshape(3 * hid)
    if need_whh or need_bhh:
        a_hh = a2[:, hid:]  # columns z, r, hn
        if need_whh:
            m = torch.mm(a_hh.t(), prev.reshape(steps * n, hid))  # (3H, H) rows z, r, n
            dw_hh = torch.cat((m[hid : 2 * hid], m[:hid], m[2 * hid :]))
        if need_bhh and has_b[1]:
            s = a_hh.sum(0)
            db_hh = torch.cat((s[hid : 2 * hid], s[:hid], s[2 * hid :]))
    return dx, dw_ih, dw_hh, db_ih, db_hh


def gru_zrn_weight(w_hh: Tensor) -> Tensor:
    """``(3H, H)``: W_hh with its rows in the order z, r, n (dh_{t-1} = [dz, dr, dhn] W_zrn + dh z)."""
    hid = w_hh.shape[0] // 3
    return torch.cat((w_hh[hid : 2 * hid], w_hh[:hid], w_hh[2 * hid :]))


# --------------------------------------------------------------------------------------------
# The layer function
# --------------------------------------------------------------------------------------------


def length_schedule(lengths: Tensor | None, steps: int, n: int, device: torch.device):
    """(schedule or None, permutation or None, inverse permutation or None)."""
    if lengths is None:
        return None, None, None
    lens = lengths.tolist()
    if len(lens) != n:
        raise ValueError(f"lengths must have shape ({n},), got {tuple(lengths.shape)}")
    if lens and (min(lens) < 1 or max(lens) > steps):
        raise ValueError(f"lengths must lie in [1, {steps}], got min {min(lens)} and max {max(lens)}")
    if all(k == steps for k in lens):
        return None, None, None
    if all(lens[k] >= lens[k + 1] for k in range(n - 1)):
        return Schedule(lens, steps, device), None, None
    order = sorted(range(n), key=lambda k: -lens[k])  # stable: ties keep their order
    perm = torch.tensor(order, dtype=torch.int64, device=device)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n, device=device)
    return Schedule([lens[k] for k in order], steps, device), perm, inv


class LayerCall(NamedTuple):
    """A layer call after validation: inputs sorted by decreasing length (when lengths are given
    and not sorted) and contiguous; ``inv`` undoes the sort; ``grad``: autograd will run."""

    x: Tensor
    h0: Tensor
    c0: Tensor | None
    sched: Schedule | None
    perm: Tensor | None
    inv: Tensor | None
    grad: bool


def prepare_layer(
    mode: str,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    weights: tuple[Tensor | None, ...],
    w_hr: Tensor | None,
    lengths: Tensor | None,
) -> LayerCall:
    """Checks a layer call (``docs/ARCHITECTURE.md``) and sorts its batch by decreasing length.

    ``weights``: (w_ih, w_hh, b_ih, b_hh), only looked at for ``requires_grad``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if w_hr is not None:
        raise NotImplementedError(
            "rnnlab.kernels: LSTM projections (proj_size > 0) are not supported; use impl='fused'"
        )
    if x.dim() != 3:
        raise ValueError(f"x must be (L, N, H_in), got shape {tuple(x.shape)}")
    steps, n, _ = x.shape
    if mode == "lstm" and c0 is None:
        raise ValueError("lstm: c0 must be given, got None")
    sched, perm, inv = length_schedule(lengths, steps, n, x.device)
    if perm is not None:
        x = x.index_select(1, perm)
        h0 = h0.index_select(0, perm)
        if c0 is not None:
            c0 = c0.index_select(0, perm)
    tensors = (x, h0, c0, *weights)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    c0 = None if c0 is None else c0.contiguous()
    return LayerCall(x.contiguous(), h0.contiguous(), c0, sched, perm, inv, grad)


def restore_order(
    inv: Tensor | None, out: Tensor, h_n: Tensor, c_n: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Undoes :func:`prepare_layer`'s sort of the batch."""
    if inv is None:
        return out, h_n, c_n
    c_n = None if c_n is None else c_n.index_select(0, inv)
    return out.index_select(1, inv), h_n.index_select(0, inv), c_n


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
    """One layer, one direction (``docs/ARCHITECTURE.md``): returns ``(out, h_n, c_n)``.

    x: (L, N, H_in); h0: (N, H); c0: (N, H) for LSTM, else None; w_ih: (G*H, H_in);
    w_hh: (G*H, H); b_ih, b_hh: (G*H,) or None; w_hr must be None (no projections here);
    lengths: (N,) int64 or None. out: (L, N, H), zero at padded steps; h_n, c_n: (N, H).
    Differentiable through a hand-written BPTT when grad is enabled and any input needs it.
    ``options``: cell options (``rnnlab/nn/options.py``) have no hand-written backward here
    yet: active ones run ``rnnlab.nn.functional.fused_layer`` with one ``OptionFallbackWarning``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if options is not None and options.active:
        from rnnlab.nn.functional import fused_layer

        warnings.warn(
            f"rnnlab.kernels.bptt.layer: no hand-written backward for {', '.join(options.names())} yet; "
            "running rnnlab.nn.functional.fused_layer (the same equations through autograd, slower)",
            OptionFallbackWarning,
            stacklevel=2,
        )
        return fused_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths, options)
    call = prepare_layer(mode, x, h0, c0, (w_ih, w_hh, b_ih, b_hh), w_hr, lengths)
    x, h0, c0, sched, grad = call.x, call.h0, call.c0, call.sched, call.grad
    c_n: Tensor | None = None
    if mode == "lstm":
        if grad:
            out, h_n, c_n = _LSTMFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, sched)
        else:
            w_ih_p, w_hh_p, bias_p = _lstm_weights(w_ih, w_hh, sum_bias(b_ih, b_hh), h0.shape[1])
            out, _, c_n, _ = _lstm_forward(x, h0, c0, w_ih_p, w_hh_p, bias_p, reverse, sched, False)
            c_n = c_n.mul_(0.5)  # the loop keeps 2c
            h_n = _final_state(out, reverse, sched)
    elif mode == "gru":
        if grad:
            out, h_n = _GRUFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, sched)
        else:
            weights = _gru_weights(w_ih, w_hh, b_ih, b_hh, h0.shape[1])
            out, _, _ = _gru_forward(x, h0, weights, reverse, sched, False)
            h_n = _final_state(out, reverse, sched)
    else:
        relu = mode == "rnn_relu"
        if grad:
            out, h_n = _RNNFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, sched)
        else:
            out = _rnn_forward(x, h0, w_ih, w_hh, sum_bias(b_ih, b_hh), relu, reverse, sched)
            h_n = _final_state(out, reverse, sched)
    if not grad:
        h_n = h_n.clone()  # not a view of out
    return restore_order(call.inv, out, h_n, c_n)
