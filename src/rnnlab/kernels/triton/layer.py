r"""One recurrent layer and direction on the persistent Triton kernels (``_kernels.py``).

The signature of ``docs/ARCHITECTURE.md``::

    triton_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)
        -> (out (L, N, H), h_n (N, H), c_n (N, H) or None)

Forward: ``gi = x W_ih^T + b`` for all steps is one GEMM ``(L*N, H_in) x (H_in, G*H)`` (for
RNN and LSTM ``b = b_ih + b_hh``; GRU folds ``b_hh`` of r and z only, since the reset gate
multiplies ``h W_hn^T + b_hn``), then one kernel launch runs the recurrence.

Backward (:class:`TritonRecurrence`): one kernel launch runs the recurrence in reverse and
writes the gate gradients ``dA (L, N, G*H)``; then, as one GEMM or reduction each::

    dX     = dA W_ih                    (L*N, G*H) x (G*H, H_in)
    dW_ih  = dA^T X                     (G*H, L*N) x (L*N, H_in)
    dW_hh  = dA_h^T H_prev              (G*H, L*N) x (L*N, H)
    db_ih  = sum_{t,n} dA,   db_hh = sum_{t,n} dA_h

where ``dA_h = dA`` except for GRU, whose n block is ``dA_n * r`` on the hidden side.
Dtypes: float32 and bfloat16 inputs; the state, the gate math and every accumulation are
float32 (``tl.dot`` in IEEE float32 for float32 inputs: no TF32). Supported: every mode,
both directions, ``lengths``, bias on/off, ``H <= MAX_HIDDEN``; anything else (LSTM
projections, other dtypes, larger H, empty input) goes to :func:`fallback_layer`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.nn import functional
from rnnlab.nn.options import CellOptions

from . import _kernels as K

__all__ = ["triton_layer", "fallback_layer", "TritonRecurrence", "supports", "MAX_HIDDEN", "DTYPES"]

MAX_HIDDEN = 256
DTYPES = (torch.float32, torch.bfloat16)
_MODE_ID = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
#: Calls whose forward kernel this machine could not launch (out of shared memory or registers).
_declined: set[tuple] = set()
#: W_hh tiles are kept in registers/shared memory across the time loop up to this many bytes.
_RESIDENT_BYTES = int(os.environ.get("RNNLAB_TRITON_RESIDENT_BYTES", 64 * 1024))
#: Tuning overrides for a GPU session (0 = the heuristics of ``_launch_config``).
_BLOCK_N = int(os.environ.get("RNNLAB_TRITON_BLOCK_N", 0))
_NUM_WARPS = int(os.environ.get("RNNLAB_TRITON_NUM_WARPS", 0))
#: float32 ``tl.dot`` precision: "ieee" (default, exact; parity tests assume it), "tf32", "tf32x3".
_PRECISION = os.environ.get("RNNLAB_TRITON_PRECISION", "ieee")


def interpreting() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _block_h(hidden: int) -> int:
    return max(16, 1 << (hidden - 1).bit_length())


def _fits(hidden: int, dtype: torch.dtype) -> bool:
    """Whether one ``(BLOCK_H, BLOCK_H)`` tile of ``W_hh`` fits in shared memory with room to spare.

    Compiled for sm_90 (Triton 3.6 and 3.9), streamed weights take one tile plus ~8 KiB: float32 H=128
    72 KiB, bfloat16 H=256 136 KiB; float32 H=256 would take 272 KiB (> 227 KiB on an H100).
    """
    block_h = _block_h(hidden)
    return hidden <= MAX_HIDDEN and block_h * block_h * (4 if dtype == torch.float32 else 2) <= 160 * 1024


def supports(mode: str, x: Tensor, w_hh: Tensor, w_hr: Tensor | None) -> bool:
    """Whether the kernels handle this call (else :func:`fallback_layer` runs it)."""
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    return (
        mode in _MODE_ID
        and w_hr is None
        and x.dtype in DTYPES
        and w_hh.dtype == x.dtype
        and (x.is_cuda or (interpreting() and x.device.type == "cpu"))
        and _fits(hidden, x.dtype)
        and steps > 0
        and batch > 0
        and (steps + 1) * batch * 4 * hidden < 2**31  # int32 offsets inside the kernels
    )


def fallback_layer(
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
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The next-best exact path: ``rnnlab.kernels.bptt.layer`` where it applies, else the fused form."""
    if w_hr is None and x.dtype in (torch.float32, torch.float64):
        from rnnlab.kernels import bptt

        return bptt.layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)
    return functional.fused_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)


def _input_gates(
    mode: str, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``gi = x W_ih^T + b`` (L, N, G*H) in x's dtype, and GRU's ``b_hn`` (H,) or None."""
    steps, batch, features = x.shape
    gates = w_ih.shape[0]
    bias, bhn = b_ih, None
    if mode == "gru":
        if b_hh is not None:
            hidden = gates // 3
            bhn = b_hh[2 * hidden :].contiguous()
            rz = torch.cat([b_hh[: 2 * hidden], b_hh.new_zeros(hidden)])  # (3H,)
            bias = rz if bias is None else bias + rz
    elif b_hh is not None:
        bias = b_hh if bias is None else bias + b_hh
    x2 = x.reshape(steps * batch, features)
    gi = torch.mm(x2, w_ih.t()) if bias is None else torch.addmm(bias, x2, w_ih.t())
    return gi.view(steps, batch, gates), bhn  # (L, N, G*H)


def _launch_config(batch: int, hidden: int, gates: int, dtype: torch.dtype) -> dict[str, Any]:
    """Block sizes and flags: ``BLOCK_N`` batch rows per program (>= 16 for ``tl.dot``), ``BLOCK_H``
    the hidden size padded to a power of two >= 16; small batches get small blocks so that more
    programs (SMs) share the work."""
    if _PRECISION not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"RNNLAB_TRITON_PRECISION must be ieee, tf32 or tf32x3, got {_PRECISION!r}")
    if _BLOCK_N and (_BLOCK_N < 16 or _BLOCK_N & (_BLOCK_N - 1)):
        raise ValueError(f"RNNLAB_TRITON_BLOCK_N must be a power of two >= 16 (tl.dot), got {_BLOCK_N}")
    block_h = _block_h(hidden)
    resident = gates * block_h * block_h * (4 if dtype == torch.float32 else 2) <= _RESIDENT_BYTES
    block_n = _BLOCK_N or (16 if batch <= 256 or block_h >= 128 else 32)
    kwargs: dict[str, Any] = dict(
        BLOCK_N=block_n,
        BLOCK_H=block_h,
        W_RESIDENT=resident,
        IS_F32=dtype == torch.float32,
        EMULATE=interpreting() and dtype != torch.float32,
        PREC=_PRECISION,
    )
    if not interpreting():
        kwargs["num_warps"] = _NUM_WARPS or (4 if block_h <= 64 else 8)
        kwargs["num_stages"] = 1  # the time loop is a dependency chain: multi-buffered W loads only cost shared memory
    return kwargs


def _forward(
    mode: str,
    gi: Tensor,
    bhn: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    reverse: bool,
    lens: Tensor | None,
    save: bool,
) -> tuple[Tensor, ...]:
    """Launch the forward kernel: -> (out, h_n, c_n or None, hs, cs, act) (the last three None unless save)."""
    steps, batch, _ = gi.shape
    hidden = w_hh.shape[1]
    gates = _GATES[mode]
    lstm = mode == "lstm"
    f32 = dict(dtype=torch.float32, device=gi.device)
    out = gi.new_empty(steps, batch, hidden)
    h_n = h0.new_empty(batch, hidden)
    c_n = c0.new_empty(batch, hidden) if lstm else None
    hs = torch.empty(steps + 1, batch, hidden, **f32) if save else None
    cs = torch.empty(steps + 1, batch, hidden, **f32) if save and lstm else None
    act = torch.empty(steps, batch, 4 * hidden, **f32) if save and mode in ("lstm", "gru") else None
    cfg = _launch_config(batch, hidden, gates, w_hh.dtype)
    dummy = h_n
    scratch = dummy if cfg["W_RESIDENT"] else torch.empty(batch, gates * hidden, **f32)
    grid = (triton_cdiv(batch, cfg["BLOCK_N"]),)
    with _on_device(gi):
        K.rnn_forward_kernel[grid](
            gi, w_hh, bhn if bhn is not None else dummy, h0, c0 if lstm else dummy,
            lens if lens is not None else dummy,
            out, h_n, c_n if lstm else dummy,
            hs if save else dummy, cs if cs is not None else dummy, act if act is not None else dummy, scratch,
            steps, batch, hidden,
            MODE=_MODE_ID[mode], G=gates, REVERSE=bool(reverse), HAS_LEN=lens is not None,
            HAS_BHN=bhn is not None, SAVE=save, **cfg,
        )  # fmt: skip
    return out, h_n, c_n, hs, cs, act


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _on_device(t: Tensor) -> Any:
    """Triton launches on the current CUDA device: make it ``t``'s (no-op on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _lengths_i32(lengths: Tensor | None, device: torch.device) -> Tensor | None:
    if lengths is None:
        return None
    return lengths.to(device=device, dtype=torch.int32).contiguous()


class TritonRecurrence(torch.autograd.Function):
    """Autograd wrapper: forward and backward kernels plus the GEMMs of the module docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        mode: str,
        reverse: bool,
        lens: Tensor | None,
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
    ) -> tuple[Tensor, ...]:
        gi, bhn = _input_gates(mode, x, w_ih, b_ih, b_hh)
        out, h_n, c_n, hs, cs, act = _forward(mode, gi, bhn, h0, c0, w_hh, reverse, lens, save=True)
        ctx.mode, ctx.reverse = mode, reverse
        ctx.has_b_ih, ctx.has_b_hh, ctx.has_c0 = b_ih is not None, b_hh is not None, c0 is not None
        ctx.save_for_backward(x, w_ih, w_hh, hs, cs, act, lens)
        if c_n is None:
            return out, h_n
        return out, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dout: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None = None
    ) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, hs, cs, act, lens = ctx.saved_tensors
        mode, reverse = ctx.mode, ctx.reverse
        steps, batch, features = x.shape
        hidden = w_hh.shape[1]
        gates = _GATES[mode]
        lstm, gru = mode == "lstm", mode == "gru"
        f32 = dict(dtype=torch.float32, device=x.device)
        dout = torch.zeros(steps, batch, hidden, dtype=x.dtype, device=x.device) if dout is None else dout.contiguous()
        dh_n = torch.zeros(batch, hidden, dtype=x.dtype, device=x.device) if dh_n is None else dh_n.contiguous()
        if lstm:
            dc_n = torch.zeros(batch, hidden, dtype=x.dtype, device=x.device) if dc_n is None else dc_n.contiguous()
        dgi = torch.empty(steps, batch, gates * hidden, **f32)  # (L, N, G*H)
        dghn = torch.empty(steps, batch, hidden, **f32) if gru else None
        dh0 = torch.empty(batch, hidden, dtype=x.dtype, device=x.device)
        dc0 = torch.empty(batch, hidden, dtype=x.dtype, device=x.device) if lstm else None
        cfg = _launch_config(batch, hidden, gates, w_hh.dtype)
        dummy = dh0
        scratch = dummy if cfg["W_RESIDENT"] else torch.empty(batch, gates * hidden, **f32)
        with _on_device(x):
            K.rnn_backward_kernel[(triton_cdiv(batch, cfg["BLOCK_N"]),)](
                w_hh, dout, dh_n, dc_n if lstm else dummy,
                hs, cs if cs is not None else dummy, act if act is not None else dummy,
                lens if lens is not None else dummy,
                dgi, dghn if gru else dummy, dh0, dc0 if lstm else dummy, scratch,
                steps, batch, hidden,
                MODE=_MODE_ID[mode], G=gates, REVERSE=bool(reverse), HAS_LEN=lens is not None, **cfg,
            )  # fmt: skip
        need = ctx.needs_input_grad  # (mode, reverse, lens, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        gemm = x.dtype  # the GEMMs run in the input dtype (float32 accumulation inside cuBLAS)
        da = dgi.view(steps * batch, gates * hidden)  # (L*N, G*H)
        da_g = da.to(gemm)
        if gru:
            da_h = torch.cat([dgi[..., : 2 * hidden], dghn], dim=2).view(steps * batch, gates * hidden)
        else:
            da_h = da
        dx = dw_ih = dw_hh = db_ih = db_hh = None
        if need[3]:
            dx = torch.mm(da_g, w_ih).view(steps, batch, features)  # (L, N, H_in)
        if need[6]:
            dw_ih = torch.mm(da_g.t(), x.reshape(steps * batch, features))  # (G*H, H_in)
        if need[7]:
            h_prev = hs[1:] if reverse else hs[:-1]  # (L, N, H) state each step started from
            dw_hh = torch.mm(da_h.to(gemm).t(), h_prev.reshape(steps * batch, hidden).to(gemm))  # (G*H, H)
        if need[8] and ctx.has_b_ih:
            db_ih = da.sum(0).to(x.dtype)
        if need[9] and ctx.has_b_hh:
            db_hh = da_h.sum(0).to(x.dtype)
        return None, None, None, dx, dh0, dc0 if ctx.has_c0 else None, dw_ih, dw_hh, db_ih, db_hh


def triton_layer(
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
    """One layer and direction on the Triton kernels (contract of ``docs/ARCHITECTURE.md``).

    x (L, N, H_in), h0 (N, H), c0 (N, H) for LSTM -> (out (L, N, H), h_n (N, H), c_n or None).
    Runs :class:`TritonRecurrence` when grad is enabled and any input requires grad, a forward
    that saves nothing otherwise; unsupported calls (see :func:`supports`) and variants whose
    launch runs out of GPU resources (remembered, one warning) go to :func:`fallback_layer`.
    """
    if options is not None and options.active:
        raise ValueError(
            f"triton_layer: no cell options on this path, got {', '.join(options.names())} "
            "(rnnlab.kernels.layer_function sends such calls to the fused form)"
        )
    if not supports(mode, x, w_hh, w_hr):
        return fallback_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)
    x = x.contiguous()
    h0 = h0.contiguous()
    c0 = c0.contiguous() if (mode == "lstm" and c0 is not None) else None
    if mode == "lstm" and c0 is None:
        raise ValueError("triton_layer: mode 'lstm' needs c0 (N, H), got None")
    w_hh = w_hh.contiguous()
    lens = _lengths_i32(lengths, x.device)
    tensors = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh) if t is not None]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    key = (mode, x.dtype, w_hh.shape[1], bool(reverse), lens is not None, training, x.device)
    if key in _declined:
        return fallback_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)
    from triton.runtime.errors import OutOfResources

    try:
        if training:
            res = TritonRecurrence.apply(mode, bool(reverse), lens, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            return (res[0], res[1], res[2]) if mode == "lstm" else (res[0], res[1], None)
        with torch.no_grad():
            gi, bhn = _input_gates(mode, x, w_ih, b_ih, b_hh)
            out, h_n, c_n, _, _, _ = _forward(mode, gi, bhn, h0, c0, w_hh, reverse, lens, save=False)
        return out, h_n, c_n
    except OutOfResources as err:  # this GPU cannot launch the variant: remember, use the next-best path
        _declined.add(key)
        warnings.warn(
            f"rnnlab.kernels.triton: {err}; using the fallback path for {mode} H={w_hh.shape[1]} {x.dtype}",
            stacklevel=2,
        )
        return fallback_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)


#: Shared with this package's diagnostic tools (compile_check.py, bench.py), which use what the layer uses.
MODE_ID, GATES, PRECISION = _MODE_ID, _GATES, _PRECISION
fits, launch_config = _fits, _launch_config
