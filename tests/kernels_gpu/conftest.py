"""Run the Triton kernels under Triton's CPU interpreter; skip this folder (with a reason) without triton.

``TRITON_INTERPRET`` must be set before ``triton.jit`` decorates the kernels, i.e. before
``rnnlab.kernels.triton.layer`` is first imported; this conftest is imported before the tests
of the folder. On a machine with a GPU, ``RNNLAB_TEST_TRITON_GPU=1`` runs the same tests on
CUDA tensors with the compiled kernels instead.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = os.environ.get("RNNLAB_TEST_TRITON_GPU") == "1" and torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _no_tf32():
    """On a GPU, torch.nn's float32 reference must not use TF32 (cuDNN allows it by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def device() -> torch.device:
    """CPU tensors under the interpreter; CUDA when ``RNNLAB_TEST_TRITON_GPU=1`` on a GPU machine."""
    return torch.device("cuda" if ON_GPU else "cpu")
