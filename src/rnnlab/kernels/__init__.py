"""Fast paths behind ``rnnlab.nn`` (same signature as ``rnnlab.nn.functional`` layer functions).

``layer_function(mode, device, dtype, *, has_lengths, has_proj, training)`` returns a callable
with the layer signature documented in ``docs/ARCHITECTURE.md`` when a fast path supports the
case, else ``None`` (the caller then uses the fused autograd form).

On CPU the fast path is :func:`rnnlab.kernels.native.layer`: the time loops compiled (C++,
``csrc/rnn_cpu.cpp``, built once per machine by :mod:`rnnlab.kernels.compiled`), per step one
GEMM and one fused vectorised pass over the gates, forward and hand-written backward. Where the
compiled loops cannot be built or loaded (one warning) or ``RNNLAB_COMPILED=0``, it is
:func:`rnnlab.kernels.bptt.layer`, the same algorithm with the per-step work as PyTorch ops
from Python (same numbers). Both support every mode, both directions, ``lengths``, bias on/off,
float32 and float64; ``bptt.layer`` runs on any device. LSTM projections (``proj_size > 0``)
and other dtypes fall back to the fused form.

On CUDA devices :func:`rnnlab.kernels.triton.cuda_layer_function` (persistent Triton kernels
or CUDA graphs, chosen by ``$RNNLAB_GPU_KERNEL``) answers first; where it has nothing, the
same BPTT path as on CPU is used.

Cell options (``rnnlab/nn/options.py``): ``options`` names the ones that are on for the call.
The compiled CPU loops run every option (``COMPILED_OPTIONS``: layer norm, recurrent dropout,
zoneout, peepholes and the other nonlinearities in C++ with a hand-written backward; weight
drop needs nothing, the module passes the masked ``W_hh`` as ``w_hh``). The other fast paths
(the Python BPTT loop, where the compiled one is unavailable or switched off, and the GPU
kernels) run ``FAST_PATH_OPTIONS[mode]`` (weight drop); for any other option the answer is
``None`` with one :class:`rnnlab.nn.options.OptionFallbackWarning` (the module then runs the
fused autograd form). ``bptt.layer`` given active options routes to the fused form with the
same warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from rnnlab.nn.options import OPTION_NAMES, OptionFallbackWarning

from . import compiled
from .bptt import MODES, layer

__all__ = ["layer_function", "layer", "SUPPORTED_DTYPES", "FAST_PATH_OPTIONS", "COMPILED_OPTIONS"]

#: Per mode, the cell options the Python BPTT loop and the GPU kernels run themselves.
FAST_PATH_OPTIONS: dict[str, frozenset[str]] = {mode: frozenset({"weight_drop"}) for mode in MODES}

#: Per mode, the cell options the compiled CPU loops run (every one the cell has).
COMPILED_OPTIONS: dict[str, frozenset[str]] = {
    "lstm": frozenset(OPTION_NAMES),
    "gru": frozenset(OPTION_NAMES) - {"peephole"},
    "rnn_tanh": frozenset({"layer_norm", "recurrent_dropout", "zoneout", "weight_drop"}),
    "rnn_relu": frozenset({"layer_norm", "recurrent_dropout", "zoneout", "weight_drop"}),
}

#: dtypes the fast path is verified for (parity tests at 1e-5 / 1e-10 and gradcheck).
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def layer_function(
    mode: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    has_lengths: bool,
    has_proj: bool,
    training: bool,
    options: tuple[str, ...] = (),
) -> Callable | None:
    """The fast layer function for this case, or ``None`` where it has none.

    ``training`` needs no separate kernel: the returned function runs the hand-written
    autograd ``Function`` when grad is enabled and an input requires it, and a forward that
    saves nothing otherwise. ``has_lengths`` is supported (sorted-prefix masking).
    ``options``: the cell options on for this call (``RNNBase.options_on()``); the compiled CPU
    loops run all of them; elsewhere one outside ``FAST_PATH_OPTIONS[mode]`` gives ``None`` and
    one ``OptionFallbackWarning``.
    """
    if mode not in MODES:
        raise ValueError(f"rnnlab.kernels: mode must be one of {MODES}, got {mode!r}")
    compiled_case = torch.device(device).type == "cpu" and not has_proj and dtype in SUPPORTED_DTYPES
    if compiled_case and set(options) <= COMPILED_OPTIONS[mode] and compiled.ops() is not None:
        from .native import layer as native_layer

        return native_layer
    missing = [name for name in options if name not in FAST_PATH_OPTIONS[mode]]
    if missing:
        warnings.warn(
            f"rnnlab.kernels: the fast path has no kernel for {', '.join(missing)} on {torch.device(device).type} "
            "yet; this forward runs impl='fused' instead (the same equations through autograd, slower)",
            OptionFallbackWarning,
            stacklevel=3,
        )
        return None
    if torch.device(device).type == "cuda":
        from .triton import cuda_layer_function

        fn = cuda_layer_function(
            mode, device, dtype, has_lengths=has_lengths, has_proj=has_proj, training=training, options=options
        )
        if fn is not None:
            return fn
    if has_proj or dtype not in SUPPORTED_DTYPES:
        return None
    return layer
