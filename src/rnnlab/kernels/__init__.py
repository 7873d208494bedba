"""Fast paths behind ``rnnlab.nn`` (same signature as ``rnnlab.nn.functional`` layer functions).

``layer_function(mode, device, dtype, *, has_lengths, has_proj, training)`` returns a callable
with the layer signature documented in ``docs/ARCHITECTURE.md`` when a fast path supports the
case, else ``None`` (the caller then uses the fused autograd form).
"""

from __future__ import annotations

import torch


def layer_function(mode: str, device: torch.device, dtype: torch.dtype, *, has_lengths: bool, has_proj: bool, training: bool):
    """No fast kernel is registered yet: the caller uses ``rnnlab.nn.functional``'s fused form."""
    return None
