"""The fused layer form captured in CUDA graphs, one graph per shape (GPU only, opt-in).

On a GPU the fused form (``rnnlab.nn.functional.fused_layer``: one GEMM for the inputs, then
per step an ``addmm`` and a few pointwise kernels) spends most of its time launching dozens of
tiny kernels per step. Captured once in a CUDA graph, the whole forward (and, with
``torch.cuda.make_graphed_callables``, the whole backward) is replayed with one launch.

:func:`graphed_layer` has the layer signature of ``docs/ARCHITECTURE.md``. A graph is cached
per key: mode, direction, the shapes, dtypes and ``requires_grad`` flags of every tensor,
whether ``lengths`` is given (its values are copied in at each call), grad mode, and the
``W_hh`` storage (one graph per layer and direction). It falls back to the uncaptured fused
form when the input is not on CUDA, when a stream is already capturing, when capture fails
(remembered per key, one warning), and when more than ``MAX_GRAPHS`` keys were seen (varying
shapes: each graph pins its own memory). ``w_hr`` (LSTM projections) is captured as well.

Limits (of replaying static buffers): a graphed layer must not be called twice with the same
key before the backward of the first call (the second replay overwrites the first one's saved
activations); outputs and gradients are copied out of the static buffers, so they stay valid.
This is why the path is opt-in (``RNNLAB_GPU_KERNEL=graphs``). Not tested on a GPU yet.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnlab.nn import functional
from rnnlab.nn.options import CellOptions

__all__ = ["graphed_layer", "available", "clear_cache", "DTYPES", "MAX_GRAPHS"]

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MAX_GRAPHS = int(os.environ.get("RNNLAB_CUDA_GRAPHS_MAX", 32))
_FAILED = object()
_cache: dict[tuple, Any] = {}
_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "lengths")


def available(device: torch.device) -> bool:
    """Whether CUDA graphs can be captured on ``device``."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def clear_cache() -> None:
    """Drop every captured graph (and the memory their pools hold)."""
    _cache.clear()


def _key(mode: str, reverse: bool, training: bool, tensors: dict[str, Tensor | None]) -> tuple:
    parts: list[Any] = [mode, bool(reverse), training]
    for name in _NAMES:
        t = tensors[name]
        parts.append(None if t is None else (tuple(t.shape), t.dtype, t.device, t.requires_grad))
    parts.append(tensors["w_hh"].data_ptr())  # type: ignore[union-attr]
    return tuple(parts)


class _CopyGrads(torch.autograd.Function):
    """Identity whose backward copies the incoming gradients (they live in a graph's static buffers)."""

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        return tuple(None if g is None else g.clone() for g in grads)


def _layer_fn(mode: str, reverse: bool, present: tuple[bool, ...]) -> Callable[..., tuple[Tensor, ...]]:
    """``fused_layer`` as a function of the present tensors only (what graph capture needs)."""

    def fn(*tensors: Tensor) -> tuple[Tensor, ...]:
        it = iter(tensors)
        a = {name: (next(it) if p else None) for name, p in zip(_NAMES, present)}
        out, h_n, c_n = functional.fused_layer(
            mode, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"], reverse, a["lengths"]
        )
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    return fn


def _capture_inference(fn: Callable[..., tuple[Tensor, ...]], args: list[Tensor]) -> Callable[..., tuple[Tensor, ...]]:
    static = [t.detach().clone() for t in args]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm up allocator and libraries off the capture
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        outs = fn(*static)

    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        for s, t in zip(static, tensors):
            s.copy_(t)
        graph.replay()
        return tuple(o.clone() for o in outs)

    return run


def _capture_training(fn: Callable[..., tuple[Tensor, ...]], args: list[Tensor]) -> Callable[..., tuple[Tensor, ...]]:
    sample = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in args)
    graphed = torch.cuda.make_graphed_callables(fn, sample, num_warmup_iters=3)

    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        outs = graphed(*_CopyGrads.apply(*tensors))
        return tuple(o.clone() for o in outs)

    return run


def graphed_layer(
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
    """``fused_layer`` replayed from a CUDA graph cached for this shape (see the module docstring).

    x (L, N, H_in), h0 (N, H_out), c0 (N, H) or None -> (out (L, N, H_out), h_n (N, H_out), c_n or None).
    """
    if options is not None and options.active:
        raise ValueError(
            f"graphed_layer: no cell options on this path, got {', '.join(options.names())} "
            "(rnnlab.kernels.layer_function sends such calls to the fused form)"
        )
    uncaptured = (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths)
    if not x.is_cuda or torch.cuda.is_current_stream_capturing() or x.shape[0] == 0 or x.shape[1] == 0:
        return functional.fused_layer(*uncaptured)
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int64)
    tensors = dict(
        x=x.contiguous(), h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr, lengths=lengths
    )
    args = [t for t in tensors.values() if t is not None]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    key = _key(mode, reverse, training, tensors)
    entry = _cache.get(key)
    if entry is None:
        if len(_cache) >= MAX_GRAPHS:
            return functional.fused_layer(*uncaptured)
        fn = _layer_fn(mode, reverse, tuple(t is not None for t in tensors.values()))
        try:
            entry = (_capture_training if training else _capture_inference)(fn, args)
        except Exception as err:  # capture is impossible here (e.g. a synchronising op): do not retry
            warnings.warn(
                f"rnnlab.kernels.cuda_graphs: capture failed ({type(err).__name__}: {err}); using the fused form for this shape",
                stacklevel=2,
            )
            entry = _FAILED
        _cache[key] = entry
    if entry is _FAILED:
        return functional.fused_layer(*uncaptured)
    outs = entry(*args)
    return outs[0], outs[1], (outs[2] if len(outs) > 2 else None)
