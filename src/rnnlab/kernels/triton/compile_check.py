"""Compile every kernel variant ahead of time for a GPU target, without a GPU.

    python -m rnnlab.kernels.triton.compile_check [--arch 90] [--hidden 16,64,128,256]

Runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin) for each mode, dtype,
hidden size, direction / lengths variant and both kernels, with the launch configuration that
``layer.launch_config`` picks, and prints the shared memory each needs (an H100 allows 227 KiB
per block). Catches compiled-mode errors that the interpreter cannot see (it found an LLVM
crash and the shared-memory limits of ``layer.fits``). Takes a few seconds per kernel.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import _kernels as K  # noqa: E402
from . import layer  # noqa: E402

_TYPED = ("gi", "w", "h0", "c0", "out", "hn", "cn", "bhn", "dout", "dhn", "dcn", "dh0", "dc0")  # input dtype


def _signature(kernel: triton.JITFunction, consts: dict, dt: str) -> dict[str, str]:
    sig = {}
    for a in kernel.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a == "len_ptr":
            sig[a] = "*i32"
        elif a.endswith("_ptr"):
            sig[a] = ("*" + dt) if a[:-4] in _TYPED else "*fp32"
        else:
            sig[a] = "i32"
    return sig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100)")
    p.add_argument("--hidden", default="16,64,128,256")
    args = p.parse_args(argv)
    if layer.interpreting():
        raise SystemExit("compile_check: unset TRITON_INTERPRET (the interpreter does not compile)")
    target = GPUTarget("cuda", args.arch, 32)
    start, count, worst = time.time(), 0, 0
    for mode, gates in layer.GATES.items():
        for dtype, dt in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            for hidden in (int(h) for h in args.hidden.split(",")):
                if not layer.fits(hidden, dtype):
                    print(f"declined (falls back): {mode} {dt} H={hidden}")
                    continue
                cfg = layer.launch_config(64, hidden, gates, dtype)
                options = {"num_warps": cfg.pop("num_warps", 4), "num_stages": cfg.pop("num_stages", 1)}
                for reverse, has_len in ((False, True), (True, False)):
                    kernels = (
                        (K.rnn_forward_kernel, dict(HAS_BHN=mode == "gru", SAVE=True)),
                        (K.rnn_backward_kernel, {}),
                    )
                    for kernel, extra in kernels:
                        consts = dict(cfg, MODE=layer.MODE_ID[mode], G=gates, REVERSE=reverse, HAS_LEN=has_len, **extra)
                        src = ASTSource(
                            fn=kernel,
                            signature=_signature(kernel, consts, dt),
                            constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()},
                        )
                        compiled = triton.compile(src, target=target, options=options)
                        count, worst = count + 1, max(worst, compiled.metadata.shared)
                        print(
                            f"ok {kernel.fn.__name__:20s} {mode:8s} {dt} H={hidden:<3d} reverse={reverse!s:5s} lengths={has_len!s:5s} "
                            f"resident={cfg['W_RESIDENT']!s:5s} warps={options['num_warps']} shared={compiled.metadata.shared}",
                            flush=True,
                        )
    print(
        f"compiled {count} kernels for sm_{args.arch}; largest shared memory {worst} bytes; {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
