"""GPU fast paths behind ``rnnlab.nn``: persistent Triton kernels and CUDA-graph capture.

``cuda_layer_function(mode, device, dtype, *, has_lengths, has_proj, training)`` has the
contract of ``rnnlab.kernels.layer_function``: a layer callable with the signature of
``docs/ARCHITECTURE.md``, or ``None`` where this package has nothing better than the generic
paths. Which GPU path answers is chosen by ``$RNNLAB_GPU_KERNEL`` (read at each call, so a
benchmark can switch it):

* ``triton`` (default): :func:`rnnlab.kernels.triton.layer.triton_layer` for float32 and
  bfloat16 without LSTM projections; it hands calls it cannot run (``H > 256``, empty input)
  to ``rnnlab.kernels.bptt`` or the fused form at call time;
* ``graphs``: the fused form captured in CUDA graphs per shape
  (:mod:`rnnlab.kernels.cuda_graphs`), with the same fallbacks;
* ``none``: ``None`` (the generic dispatch decides).

Triton is optional (``pip install rnnlab[gpu]``): without it ``triton`` answers ``None``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable

import torch

from rnnlab.nn.options import OptionFallbackWarning

__all__ = ["cuda_layer_function", "triton_available", "GPU_KERNELS"]

GPU_KERNELS = ("triton", "graphs", "none")
_MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def _choice() -> str:
    choice = os.environ.get("RNNLAB_GPU_KERNEL", "triton").strip().lower() or "triton"
    if choice not in GPU_KERNELS:
        raise ValueError(f"RNNLAB_GPU_KERNEL must be one of {', '.join(GPU_KERNELS)}, got {choice!r}")
    return choice


def cuda_layer_function(
    mode: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    has_lengths: bool,
    has_proj: bool,
    training: bool,
    options: tuple[str, ...] = (),
) -> Callable | None:
    """The GPU layer function for this case, or ``None`` (same contract as ``rnnlab.kernels.layer_function``).

    ``None`` for non-CUDA devices, LSTM projections, dtypes other than float32/bfloat16
    (``graphs``: float32/float64/bfloat16/float16), or when the chosen path is unavailable.
    ``has_lengths`` and ``training`` need nothing special: both paths mask by lengths and run
    a saving forward only when a backward may follow. ``options``: the cell options on for the
    call, of which only ``weight_drop`` reaches here (a masked ``w_hh``: Triton runs it; the
    ``graphs`` path, one graph per ``W_hh`` storage, answers ``None`` with one warning).
    """
    if mode not in _MODES:
        raise ValueError(f"rnnlab.kernels.triton: mode must be one of {_MODES}, got {mode!r}")
    device = torch.device(device)
    if device.type != "cuda" or has_proj:
        return None
    choice = _choice()
    if choice == "triton":
        if dtype not in (torch.float32, torch.bfloat16) or not triton_available():
            return None
        from .layer import triton_layer

        return triton_layer
    if choice == "graphs":
        from rnnlab.kernels import cuda_graphs

        if options:
            warnings.warn(
                f"rnnlab.kernels: RNNLAB_GPU_KERNEL=graphs captures one graph per W_hh storage and {', '.join(options)} "
                "gives a new one each forward; this forward runs the generic BPTT path instead",
                OptionFallbackWarning,
                stacklevel=3,
            )
            return None
        if dtype not in cuda_graphs.DTYPES or not cuda_graphs.available(device):
            return None
        return cuda_graphs.graphed_layer
    return None
