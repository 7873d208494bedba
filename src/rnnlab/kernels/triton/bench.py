"""GPU micro-benchmark of one layer: Triton kernels, CUDA graphs, BPTT and fused forms vs cuDNN.

    python -m rnnlab.kernels.triton.bench [--modes lstm,gru] [--shapes 200x64x64,200x128x128,500x64x64]
                                          [--dtypes float32,bfloat16] [--paths triton,graphs,bptt,fused]
                                          [--repeats 20] [--no-tf32]

Independent of the dispatch in ``rnnlab.kernels`` (it calls the layer functions directly on a
``torch.nn`` module's weights). For each mode, shape ``LxNxH`` (H_in = H) and dtype it first
checks each path against cuDNN (max |difference| of the output and of dX after a training step),
then prints the median time of inference (no grad) and of a training step (forward + backward of
``(out * g).sum()`` w.r.t. x and all weights) and the ratio to cuDNN (<= 1.0: as fast).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from rnnlab.kernels import bptt, cuda_graphs
from rnnlab.nn import functional

from .layer import triton_layer

PATHS: dict[str, Callable] = {
    "triton": triton_layer,
    "graphs": cuda_graphs.graphed_layer,
    "bptt": bptt.layer,
    "fused": functional.fused_layer,
}
TORCH = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if not torch.cuda.is_available():  # dry run of the script on a CPU (TRITON_INTERPRET=1)
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(
    mode: str,
    steps: int,
    batch: int,
    hidden: int,
    dtype: torch.dtype,
    paths: list[str],
    repeats: int,
    dev: torch.device | None = None,
) -> None:
    dev = torch.device("cuda") if dev is None else dev
    torch.manual_seed(0)
    ref = getattr(torch.nn, TORCH[mode])(hidden, hidden).to(dev, dtype)
    ws = [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0]
    x = torch.randn(steps, batch, hidden, device=dev, dtype=dtype, requires_grad=True)
    h0 = torch.zeros(batch, hidden, device=dev, dtype=dtype)
    c0 = h0.clone() if mode == "lstm" else None
    g = torch.randn(steps, batch, hidden, device=dev, dtype=dtype)

    def layer_call(path: str) -> Callable[[], tuple]:
        if path == "cudnn":
            return lambda: (ref(x, (h0[None], c0[None]) if mode == "lstm" else h0[None])[0],)
        fn = PATHS[path]
        return lambda: fn(mode, x, h0, c0, *ws, None, False, None)

    def train(call: Callable[[], tuple]) -> Callable[[], None]:
        def step() -> None:
            x.grad = None
            for w in ws:
                w.grad = None
            (call()[0] * g).sum().backward()

        return step

    def infer(call: Callable[[], tuple]) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                call()

        return step

    base = layer_call("cudnn")
    train(base)()
    ref_out, ref_dx = base()[0].detach().float(), x.grad.float()
    t_inf = _median_ms(infer(base), repeats)
    t_train = _median_ms(train(base), repeats)
    name = f"{mode:8s} L={steps:<4d} N={batch:<4d} H={hidden:<4d} {str(dtype)[6:]:9s}"
    print(f"{name} cudnn   infer {t_inf:8.3f} ms  train {t_train:8.3f} ms")
    for path in paths:
        if dtype not in (torch.float32, torch.float64) and path == "bptt":
            continue
        call = layer_call(path)
        train(call)()
        err_out = (call()[0].detach().float() - ref_out).abs().max().item()
        err_dx = (x.grad.float() - ref_dx).abs().max().item()
        ti, tt = _median_ms(infer(call), repeats), _median_ms(train(call), repeats)
        print(
            f"{name} {path:7s} infer {ti:8.3f} ms  train {tt:8.3f} ms  ratio infer {ti / t_inf:6.2f} train {tt / t_train:6.2f}"
            f"  max|d out| {err_out:.1e} max|d dX| {err_dx:.1e}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="lstm,gru")
    p.add_argument("--shapes", default="200x64x64,200x128x128,500x64x64", help="LxNxH,...")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--paths", default="triton,graphs,bptt,fused")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--no-tf32", action="store_true", help="cuDNN/cuBLAS float32 without TF32 (torch's default allows it in cuDNN)"
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("rnnlab.kernels.triton.bench: needs a CUDA GPU (torch.cuda.is_available() is False)")
    paths = [s for s in args.paths.split(",") if s]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"--paths: expected names from {', '.join(PATHS)}, got {', '.join(unknown)}")
    torch.backends.cudnn.benchmark = False
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    import triton

    from . import layer

    print(
        f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
        f"cudnn tf32 {torch.backends.cudnn.allow_tf32}  cublas tf32 {torch.backends.cuda.matmul.allow_tf32}  "
        f"triton float32 dot precision {layer.PRECISION}"
    )
    for mode in args.modes.split(","):
        for shape in args.shapes.split(","):
            steps, batch, hidden = (int(v) for v in shape.split("x"))
            for dt in args.dtypes.split(","):
                run(mode, steps, batch, hidden, getattr(torch, dt), paths, args.repeats)


if __name__ == "__main__":
    main()
