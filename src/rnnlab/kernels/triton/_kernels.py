r"""Persistent Triton kernels: one launch runs one layer and direction over the whole sequence.

Grid: one program per block of ``BLOCK_N`` batch rows. A program keeps its rows' state
``h`` (and ``c``) in registers in float32 for all ``L`` steps; per step it loads the precomputed
input gates ``gi[t] = x_t W_ih^T + b`` (one cuBLAS GEMM outside), adds ``h W_hk^T`` for each
gate ``k`` with ``tl.dot`` (the ``(H, H)`` tiles of ``W_hh`` are loaded once before the time
loop when they fit on chip, ``W_RESIDENT``; else they are streamed from L2 every step, one gate
tile at a time through a runtime loop whose products go through an ``(N, G*H)`` float32 scratch
and a CTA barrier, so that shared memory holds one tile, not G), applies the gate
activations and the state update, and writes ``h_t``. Rows of different programs never
interact, so no grid-wide synchronisation is needed.

Backward runs the time loop in reverse with the same layout: per step it forms the gate
gradients ``dA_t`` (pre-activation) from the saved activations, writes them to ``(L, N, G*H)``
and carries ``dh_{t-1} = sum_k dA_{t,k} W_hk`` (``tl.dot``) and ``dc_{t-1}``. The weight and
input gradients are then large GEMMs in torch (``layer.py``).

Modes (``MODE``): 0 rnn_tanh, 1 rnn_relu, 2 lstm (gates i, f, g, o), 3 gru (r, z, n).
``lengths``: step ``t`` of row ``k`` is real when ``t < len[k]``; padded steps leave the
state unchanged, write zero output and (backward) pass ``dh``/``dc`` through unchanged.
Saved for backward (``SAVE``), all float32:

* ``hs``/``cs`` ``(L+1, N, H)``: the carried state, ``h0`` at index 0 (forward direction) or
  ``L`` (reverse), the state after step ``t`` at ``t + 1`` (forward) or ``t`` (reverse), so
  that ``hs[:-1]`` / ``hs[1:]`` is the state each step started from, in time order;
* ``act`` ``(L, N, S*H)``: LSTM ``i, f, g, o`` (S = 4); GRU ``r, z, n, h W_hn^T + b_hn``
  (S = 4); RNN nothing (its derivative is read from ``hs``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh(x) = 2 sigmoid(2x) - 1: saturates to -1/1 without NaN (exp overflow gives 2/inf = 0);
    # absolute error ~1e-7 near 0. (A select on sign(x) here crashed LLVM's SLP vectorizer in
    # Triton 3.9 for the float32 LSTM forward; libdevice.tanh does not run in the interpreter.)
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _dot(a, b, IS_F32: tl.constexpr, EMULATE: tl.constexpr, PREC: tl.constexpr):
    """``a @ b`` accumulated in float32; float32 operands in ``PREC`` precision ("ieee" by
    default: exact float32 products, no TF32; "tf32" / "tf32x3" on request).

    ``EMULATE``: the operands are already rounded to the low-precision dtype; multiply them as
    float32 (the interpreter's ``tl.dot`` mishandles bfloat16, the products are the same).
    """
    if EMULATE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IS_F32:
        return tl.dot(a, b, input_precision=PREC)
    else:
        return tl.dot(a, b, out_dtype=tl.float32)


@triton.jit
def _w_tile(w_ptr, k, H, offs, TRANSPOSE: tl.constexpr):
    """Gate ``k``'s block of ``W_hh`` (G*H, H), zero-padded to (BLOCK_H, BLOCK_H).

    ``TRANSPOSE``: tile[j, i] = W[k*H + i, j] (forward: h @ tile); else tile[i, j] = W[k*H + i, j]
    (backward: dA_k @ tile).
    """
    m = (offs[:, None] < H) & (offs[None, :] < H)
    if TRANSPOSE:
        ptrs = w_ptr + (k * H + offs[None, :]) * H + offs[:, None]
    else:
        ptrs = w_ptr + (k * H + offs[:, None]) * H + offs[None, :]
    return tl.load(ptrs, mask=m, other=0.0)


@triton.jit
def _streamed_dh(
    scr_ptr,
    w_ptr,
    gst,
    m2,
    H,
    offs,
    G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    IS_F32: tl.constexpr,
    EMULATE: tl.constexpr,
    PREC: tl.constexpr,
):
    """``sum_k dA_k W_hk`` with the gate gradients ``dA_k`` parked in the scratch, one gate tile at a time."""
    wdt = w_ptr.dtype.element_ty
    tl.debug_barrier()  # the scratch writes of every thread are visible
    acc = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for k in range(0, G):
        a = tl.load(scr_ptr + gst + k * H, mask=m2, other=0.0).to(wdt)
        acc += _dot(a, _w_tile(w_ptr, k, H, offs, False), IS_F32, EMULATE, PREC)
    tl.debug_barrier()  # every thread has read the scratch before the next step rewrites it
    return acc


@triton.jit
def rnn_forward_kernel(
    gi_ptr,  # (L, N, G*H) input gates, biases folded in (GRU: all but b_hn)
    w_ptr,  # (G*H, H) W_hh
    bhn_ptr,  # (H,) GRU b_hn (HAS_BHN)
    h0_ptr,  # (N, H)
    c0_ptr,  # (N, H) LSTM
    len_ptr,  # (N,) int32 (HAS_LEN)
    out_ptr,  # (L, N, H)
    hn_ptr,  # (N, H)
    cn_ptr,  # (N, H) LSTM
    hs_ptr,  # (L+1, N, H) float32 (SAVE)
    cs_ptr,  # (L+1, N, H) float32 (SAVE, LSTM)
    act_ptr,  # (L, N, 4*H) float32 (SAVE, LSTM/GRU)
    scr_ptr,  # (N, G*H) float32 scratch (not W_RESIDENT)
    L,
    N,
    H,
    MODE: tl.constexpr,
    G: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_BHN: tl.constexpr,
    SAVE: tl.constexpr,
    W_RESIDENT: tl.constexpr,
    IS_F32: tl.constexpr,
    EMULATE: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs = tl.arange(0, BLOCK_H)
    m2 = (rows[:, None] < N) & (offs[None, :] < H)
    st = rows[:, None] * H + offs[None, :]  # (BLOCK_N, BLOCK_H) offsets into an (N, H) slab
    gst = rows[:, None] * (G * H) + offs[None, :]  # into an (N, G*H) slab
    ast = rows[:, None] * (4 * H) + offs[None, :]  # into an (N, 4*H) slab
    wdt = w_ptr.dtype.element_ty

    h = tl.load(h0_ptr + st, mask=m2, other=0.0).to(tl.float32)
    c = h
    if MODE == 2:
        c = tl.load(c0_ptr + st, mask=m2, other=0.0).to(tl.float32)
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=rows < N, other=0)
    bhn = tl.zeros([BLOCK_H], dtype=tl.float32)
    if HAS_BHN:
        bhn = tl.load(bhn_ptr + offs, mask=offs < H, other=0.0).to(tl.float32)
    if SAVE:
        first = L * N * H if REVERSE else 0
        tl.store(hs_ptr + first + st, h, mask=m2)
        if MODE == 2:
            tl.store(cs_ptr + first + st, c, mask=m2)
    if W_RESIDENT:
        w0 = _w_tile(w_ptr, 0, H, offs, True)
        if G > 1:
            w1 = _w_tile(w_ptr, 1, H, offs, True)
            w2 = _w_tile(w_ptr, 2, H, offs, True)
        if G > 3:
            w3 = _w_tile(w_ptr, 3, H, offs, True)

    for s in range(0, L):
        if REVERSE:
            t = L - 1 - s
        else:
            t = s
        hd = h.to(wdt)
        # gh_k = h W_hk^T (BLOCK_N, BLOCK_H) for each gate k
        if W_RESIDENT:
            gh0 = _dot(hd, w0, IS_F32, EMULATE, PREC)
            if G > 1:
                gh1 = _dot(hd, w1, IS_F32, EMULATE, PREC)
                gh2 = _dot(hd, w2, IS_F32, EMULATE, PREC)
            if G > 3:
                gh3 = _dot(hd, w3, IS_F32, EMULATE, PREC)
        else:
            # Streamed: one gate tile at a time (a runtime loop, so one tile's worth of shared
            # memory), the products parked in the (N, G*H) scratch and read back after a barrier.
            for k in range(0, G):
                acc = _dot(hd, _w_tile(w_ptr, k, H, offs, True), IS_F32, EMULATE, PREC)
                tl.store(scr_ptr + gst + k * H, acc, mask=m2)
            tl.debug_barrier()
            gh0 = tl.load(scr_ptr + gst, mask=m2, other=0.0)
            if G > 1:
                gh1 = tl.load(scr_ptr + gst + H, mask=m2, other=0.0)
                gh2 = tl.load(scr_ptr + gst + 2 * H, mask=m2, other=0.0)
            if G > 3:
                gh3 = tl.load(scr_ptr + gst + 3 * H, mask=m2, other=0.0)
            tl.debug_barrier()  # every thread has read the scratch before the next step rewrites it
        gb = gi_ptr + t * N * (G * H) + gst
        if MODE == 2:
            i = _sigmoid(tl.load(gb, mask=m2, other=0.0).to(tl.float32) + gh0)
            f = _sigmoid(tl.load(gb + H, mask=m2, other=0.0).to(tl.float32) + gh1)
            g = _tanh(tl.load(gb + 2 * H, mask=m2, other=0.0).to(tl.float32) + gh2)
            o = _sigmoid(tl.load(gb + 3 * H, mask=m2, other=0.0).to(tl.float32) + gh3)
            c_new = f * c + i * g
            h_new = o * _tanh(c_new)
        elif MODE == 3:
            r = _sigmoid(tl.load(gb, mask=m2, other=0.0).to(tl.float32) + gh0)
            z = _sigmoid(tl.load(gb + H, mask=m2, other=0.0).to(tl.float32) + gh1)
            ghn = gh2 + bhn[None, :]
            n = _tanh(tl.load(gb + 2 * H, mask=m2, other=0.0).to(tl.float32) + r * ghn)
            h_new = n + z * (h - n)
            c_new = c
        else:
            a = tl.load(gb, mask=m2, other=0.0).to(tl.float32) + gh0
            if MODE == 0:
                h_new = _tanh(a)
            else:
                h_new = tl.maximum(a, 0.0)
            c_new = c
        if HAS_LEN:
            valid = (t < lens)[:, None]
            h = tl.where(valid, h_new, h)
            c = tl.where(valid, c_new, c)
            out = tl.where(valid, h_new, 0.0)
        else:
            h = h_new
            c = c_new
            out = h_new
        tl.store(out_ptr + t * N * H + st, out, mask=m2)
        if SAVE:
            after = (t if REVERSE else t + 1) * N * H
            tl.store(hs_ptr + after + st, h, mask=m2)
            ab = act_ptr + t * N * (4 * H) + ast
            if MODE == 2:
                tl.store(cs_ptr + after + st, c, mask=m2)
                tl.store(ab, i, mask=m2)
                tl.store(ab + H, f, mask=m2)
                tl.store(ab + 2 * H, g, mask=m2)
                tl.store(ab + 3 * H, o, mask=m2)
            if MODE == 3:
                tl.store(ab, r, mask=m2)
                tl.store(ab + H, z, mask=m2)
                tl.store(ab + 2 * H, n, mask=m2)
                tl.store(ab + 3 * H, ghn, mask=m2)
    tl.store(hn_ptr + st, h, mask=m2)
    if MODE == 2:
        tl.store(cn_ptr + st, c, mask=m2)


@triton.jit
def rnn_backward_kernel(
    w_ptr,  # (G*H, H) W_hh
    dout_ptr,  # (L, N, H) gradient of out
    dhn_ptr,  # (N, H) gradient of h_n
    dcn_ptr,  # (N, H) gradient of c_n (LSTM)
    hs_ptr,  # (L+1, N, H) float32 carried states (see the module docstring)
    cs_ptr,  # (L+1, N, H) float32 (LSTM)
    act_ptr,  # (L, N, 4*H) float32 (LSTM/GRU)
    len_ptr,  # (N,) int32 (HAS_LEN)
    dgi_ptr,  # out: (L, N, G*H) float32 gradient of the input gates gi
    dghn_ptr,  # out: (L, N, H) float32 GRU gradient of h W_hn^T + b_hn
    dh0_ptr,  # out: (N, H)
    dc0_ptr,  # out: (N, H) LSTM
    scr_ptr,  # (N, G*H) float32 scratch (not W_RESIDENT)
    L,
    N,
    H,
    MODE: tl.constexpr,
    G: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    W_RESIDENT: tl.constexpr,
    IS_F32: tl.constexpr,
    EMULATE: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs = tl.arange(0, BLOCK_H)
    m2 = (rows[:, None] < N) & (offs[None, :] < H)
    st = rows[:, None] * H + offs[None, :]
    gst = rows[:, None] * (G * H) + offs[None, :]
    ast = rows[:, None] * (4 * H) + offs[None, :]
    wdt = w_ptr.dtype.element_ty

    dh = tl.load(dhn_ptr + st, mask=m2, other=0.0).to(tl.float32)
    dc = dh
    if MODE == 2:
        dc = tl.load(dcn_ptr + st, mask=m2, other=0.0).to(tl.float32)
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=rows < N, other=0)
    if W_RESIDENT:
        w0 = _w_tile(w_ptr, 0, H, offs, False)
        if G > 1:
            w1 = _w_tile(w_ptr, 1, H, offs, False)
            w2 = _w_tile(w_ptr, 2, H, offs, False)
        if G > 3:
            w3 = _w_tile(w_ptr, 3, H, offs, False)

    for s in range(0, L):
        if REVERSE:
            t = s
        else:
            t = L - 1 - s
        prev = (t + 1 if REVERSE else t) * N * H
        after = (t if REVERSE else t + 1) * N * H
        dy = tl.load(dout_ptr + t * N * H + st, mask=m2, other=0.0).to(tl.float32)
        if HAS_LEN:
            valid = (t < lens)[:, None]
            dy = tl.where(valid, dy, 0.0)
        dh = dh + dy
        gb = dgi_ptr + t * N * (G * H) + gst
        ab = act_ptr + t * N * (4 * H) + ast
        if MODE == 2:
            i = tl.load(ab, mask=m2, other=0.0)
            f = tl.load(ab + H, mask=m2, other=0.0)
            g = tl.load(ab + 2 * H, mask=m2, other=0.0)
            o = tl.load(ab + 3 * H, mask=m2, other=0.0)
            c_t = tl.load(cs_ptr + after + st, mask=m2, other=0.0)
            c_p = tl.load(cs_ptr + prev + st, mask=m2, other=0.0)
            tc = _tanh(c_t)
            dct = dc + dh * o * (1.0 - tc * tc)
            da_i = dct * g * i * (1.0 - i)
            da_f = dct * c_p * f * (1.0 - f)
            da_g = dct * i * (1.0 - g * g)
            da_o = dh * tc * o * (1.0 - o)
            if HAS_LEN:
                da_i = tl.where(valid, da_i, 0.0)
                da_f = tl.where(valid, da_f, 0.0)
                da_g = tl.where(valid, da_g, 0.0)
                da_o = tl.where(valid, da_o, 0.0)
            if W_RESIDENT:
                dh_prev = (
                    _dot(da_i.to(wdt), w0, IS_F32, EMULATE, PREC)
                    + _dot(da_f.to(wdt), w1, IS_F32, EMULATE, PREC)
                    + _dot(da_g.to(wdt), w2, IS_F32, EMULATE, PREC)
                    + _dot(da_o.to(wdt), w3, IS_F32, EMULATE, PREC)
                )
            else:
                tl.store(scr_ptr + gst, da_i, mask=m2)
                tl.store(scr_ptr + gst + H, da_f, mask=m2)
                tl.store(scr_ptr + gst + 2 * H, da_g, mask=m2)
                tl.store(scr_ptr + gst + 3 * H, da_o, mask=m2)
                dh_prev = _streamed_dh(scr_ptr, w_ptr, gst, m2, H, offs, G, BLOCK_N, BLOCK_H, IS_F32, EMULATE, PREC)
            dc_prev = dct * f
            tl.store(gb, da_i, mask=m2)
            tl.store(gb + H, da_f, mask=m2)
            tl.store(gb + 2 * H, da_g, mask=m2)
            tl.store(gb + 3 * H, da_o, mask=m2)
            if HAS_LEN:
                dh = tl.where(valid, dh_prev, dh)
                dc = tl.where(valid, dc_prev, dc)
            else:
                dh = dh_prev
                dc = dc_prev
        elif MODE == 3:
            r = tl.load(ab, mask=m2, other=0.0)
            z = tl.load(ab + H, mask=m2, other=0.0)
            n = tl.load(ab + 2 * H, mask=m2, other=0.0)
            ghn = tl.load(ab + 3 * H, mask=m2, other=0.0)
            h_p = tl.load(hs_ptr + prev + st, mask=m2, other=0.0)
            da_n = dh * (1.0 - z) * (1.0 - n * n)
            da_r = da_n * ghn * r * (1.0 - r)
            da_z = dh * (h_p - n) * z * (1.0 - z)
            dg_n = da_n * r  # gradient of h W_hn^T + b_hn
            if HAS_LEN:
                da_n = tl.where(valid, da_n, 0.0)
                da_r = tl.where(valid, da_r, 0.0)
                da_z = tl.where(valid, da_z, 0.0)
                dg_n = tl.where(valid, dg_n, 0.0)
            if W_RESIDENT:
                dh_prev = (
                    dh * z
                    + _dot(da_r.to(wdt), w0, IS_F32, EMULATE, PREC)
                    + _dot(da_z.to(wdt), w1, IS_F32, EMULATE, PREC)
                    + _dot(dg_n.to(wdt), w2, IS_F32, EMULATE, PREC)
                )
            else:
                tl.store(scr_ptr + gst, da_r, mask=m2)
                tl.store(scr_ptr + gst + H, da_z, mask=m2)
                tl.store(scr_ptr + gst + 2 * H, dg_n, mask=m2)
                dh_prev = dh * z + _streamed_dh(
                    scr_ptr, w_ptr, gst, m2, H, offs, G, BLOCK_N, BLOCK_H, IS_F32, EMULATE, PREC
                )
            tl.store(gb, da_r, mask=m2)
            tl.store(gb + H, da_z, mask=m2)
            tl.store(gb + 2 * H, da_n, mask=m2)
            tl.store(dghn_ptr + t * N * H + st, dg_n, mask=m2)
            if HAS_LEN:
                dh = tl.where(valid, dh_prev, dh)
            else:
                dh = dh_prev
        else:
            y = tl.load(hs_ptr + after + st, mask=m2, other=0.0)
            if MODE == 0:
                da = dh * (1.0 - y * y)
            else:
                da = tl.where(y > 0.0, dh, 0.0)
            if HAS_LEN:
                da = tl.where(valid, da, 0.0)
            if W_RESIDENT:
                dh_prev = _dot(da.to(wdt), w0, IS_F32, EMULATE, PREC)
            else:
                tl.store(scr_ptr + gst, da, mask=m2)
                dh_prev = _streamed_dh(scr_ptr, w_ptr, gst, m2, H, offs, G, BLOCK_N, BLOCK_H, IS_F32, EMULATE, PREC)
            tl.store(gb, da, mask=m2)
            if HAS_LEN:
                dh = tl.where(valid, dh_prev, dh)
            else:
                dh = dh_prev
    tl.store(dh0_ptr + st, dh, mask=m2)
    if MODE == 2:
        tl.store(dc0_ptr + st, dc, mask=m2)
