"""The two CPU fast paths the kernel tests run on: ``python`` (rnnlab.kernels.bptt) and
``compiled`` (rnnlab.kernels.native, C++ built once per machine into the rnnlab cache)."""

from __future__ import annotations

import pytest

from rnnlab.kernels import compiled

PATHS = ("python", "compiled")


def require_compiled() -> None:
    """Skip where the compiled path is switched off or no compiler exists; fail where it should build."""
    if compiled.mode() == "0":
        pytest.skip(f"{compiled.ENV_VAR}=0")
    if compiled.ops() is None:
        reason = compiled.unavailable_reason()
        if isinstance(reason, str) and reason.startswith(compiled.NoCompilerError.__name__):
            pytest.skip(reason)
        pytest.fail(f"the compiled CPU kernels did not build or load: {reason}")
