"""Speed and memory of rnnlab.nn (impl "fast" and "fused") against torch.nn, in one process.

    python benchmarks/bench_nn.py [--device cpu|cuda] [--repeats N] [--modes lstm,gru,rnn]
                                  [--shapes 200x64x64,200x128x128,500x64x64,...] [--threads 2]
                                  [--impls fast,fast-py,fused]

Implementations: ``fast`` is ``impl="fast"`` as a user gets it (on CPU the compiled time loops
of ``rnnlab.kernels.native`` when they can be built, else the Python fast path), ``fast-py``
is ``impl="fast"`` with ``RNNLAB_COMPILED=0`` (the Python fast path, ``rnnlab.kernels.bptt``),
``fused`` and ``reference`` the other impls. The default shapes include H = 256 and 512 and a
batch of one (``200x1x64``: what ``rnnlab predict`` on one review waits for, see the forward row).

For every mode and shape ``LxNxH`` (sequence length, batch, input size = hidden size) it prints
the median time of a forward pass under ``torch.no_grad()`` and of a training step (forward +
backward of ``out.sum() + h_n.sum()`` with respect to the input and every parameter), for
torch.nn and each rnnlab impl, and the ratios rnnlab / torch (<= 1.0: rnnlab is as fast).
The implementations are timed round-robin within each repeat, so that a slow period of a shared
machine hits all of them alike; the median over repeats is reported.

Peak memory of one training step (torch.nn and impl fast): on CUDA ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the step; on CPU the allocation timeline of ``torch.profiler`` (every tensor
storage the step creates and frees, in order; the peak of the running sum of live bytes; the
largest of 3 profiled steps, as the profiler occasionally misses allocations). The
inputs and parameters exist before the step and are not counted. Memory that a library
allocates outside PyTorch's allocator (e.g. oneDNN's own scratchpad) is not seen by either
method; RSS deltas were not used because glibc keeps freed memory mapped, which makes them
depend on what ran before.

    python benchmarks/bench_nn.py --options [--modes lstm,gru,rnn] [--shapes 200x64x64]

times the cell options of issue 13 instead (``rnnlab/nn/options.py``): per mode one row per
option alone and one combination, in training mode (masks drawn each call), fwd+bwd and
inference (``torch.no_grad()``, eval mode), for ``impl="fast"`` (``[fused]`` marks a row where
the fast path has no kernel for the option yet and ran the fused form, see
``OptionFallbackWarning``), ``impl="fused"``, and the same options written the usual way
(``nn.Linear`` for the input and recurrent products, a Python loop over time with autograd,
``F.layer_norm`` per gate block, ``F.dropout`` on ``W_hh`` for weight drop; the same function,
checked against rnnlab's in eval mode before timing). Ratios are against the plain rnnlab layer
(``impl="fast"``, no option) in the same pass.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import rnnlab.nn as rnn  # noqa: E402
from rnnlab.kernels import compiled  # noqa: E402
from rnnlab.nn.options import ACTIVATIONS, OptionFallbackWarning  # noqa: E402

MODES = {"lstm": ("LSTM", {}), "gru": ("GRU", {}), "rnn": ("RNN", {"nonlinearity": "tanh"})}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Benchmark names of rnnlab implementations that are ``impl="fast"`` with $RNNLAB_COMPILED set.
COMPILED_SETTING = {"fast-py": "0"}


class _Python(torch.nn.Module):
    """Runs the wrapped rnnlab module with ``RNNLAB_COMPILED`` set to ``setting`` (``fast-py``)."""

    def __init__(self, module: torch.nn.Module, setting: str) -> None:
        super().__init__()
        self.module, self.setting = module, setting

    def forward(self, *args):
        saved = os.environ.get(compiled.ENV_VAR)
        os.environ[compiled.ENV_VAR] = self.setting
        try:
            return self.module(*args)
        finally:
            if saved is None:
                del os.environ[compiled.ENV_VAR]
            else:
                os.environ[compiled.ENV_VAR] = saved


def _build(mode: str, size: int, device: torch.device, impls: list[str]) -> dict[str, torch.nn.Module]:
    cls_name, kwargs = MODES[mode]
    reference = getattr(torch.nn, cls_name)(size, size, **kwargs).to(device)
    models: dict[str, torch.nn.Module] = {"torch": reference}
    for impl in impls:
        model = getattr(rnn, cls_name)(size, size, impl=impl.split("-")[0], **kwargs).to(device)
        model.load_state_dict(reference.state_dict(), strict=True)
        models[impl] = _Python(model, COMPILED_SETTING[impl]) if impl in COMPILED_SETTING else model
    return models


def _forward(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def _train_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        for p in model.parameters():
            p.grad = None
        out, h = model(x)
        h_n = h[0] if isinstance(h, tuple) else h
        (out.sum() + h_n.sum()).backward()

    return run


def _fast_path(device: torch.device) -> str:
    """What impl "fast" runs on this device (for the header)."""
    if device.type != "cpu":
        return "fast = rnnlab.kernels on " + device.type
    ops = compiled.ops()
    if ops is None:
        return "fast = Python fast path (compiled loops unavailable or off)"
    return f"fast = compiled loops ({ops.build_info()}, cores {compiled.cores()})"


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _medians(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device, few: dict[str, int]
) -> dict[str, float]:
    """Median seconds per call; ``few[k]`` caps the repeats of slow implementations."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k, fn in fns.items():  # round-robin: noise hits every implementation alike
            if r < few.get(k, repeats):
                times[k].append(_timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def _peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``fn`` above what was allocated before it."""
    fn()  # warm (lazy initialisation, oneDNN primitive cache)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    peaks = []
    for _ in range(3):  # the profiler occasionally misses allocations: keep the largest peak
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            fn()
        live = peak = 0
        for _, action, (key, _version), size in MemoryProfile(prof.profiler.kineto_results).timeline:
            if key.device.type != "cpu":
                continue
            if action == Action.CREATE:
                live += size
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
        peaks.append(peak)
    return max(peaks)


def _profile_tables(modes: list[str], shapes: list[tuple[int, int, int]], device: torch.device) -> None:
    """Where the time goes: self time per ATen op, impl fast vs torch.nn, 5 calls each."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for mode in modes:
        for steps, batch, size in shapes:
            models = _build(mode, size, device, ["fast"])
            x = torch.randn(steps, batch, size, device=device)
            xg = x.clone().requires_grad_(True)
            for label, make in (("forward (no grad)", _forward), ("forward+backward", _train_step)):
                for impl in ("fast", "torch"):
                    fn = make(models[impl], x if make is _forward else xg)
                    fn()
                    fn()
                    with profile(activities=activities) as prof:
                        for _ in range(5):
                            fn()
                        _sync(device)
                    print(
                        f"## {mode} {steps}x{batch}x{size} {label}, {impl}, threads {torch.get_num_threads()}, 5 calls"
                    )
                    print(
                        prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12 if impl == "fast" else 4)
                    )


#: The option rows per mode: label -> constructor keywords.
OPTION_ROWS: dict[str, dict[str, dict[str, Any]]] = {
    mode: {
        "plain": {},
        "layer_norm": {"layer_norm": True},
        "recurrent_dropout 0.25": {"recurrent_dropout": 0.25},
        "zoneout 0.1": {"zoneout": 0.1},
        "weight_drop 0.3": {"weight_drop": 0.3},
        **({"peephole": {"peephole": True}} if mode == "lstm" else {}),
        **(
            {"gate hard_sigmoid": {"gate_activation": "hard_sigmoid"}, "act hard_tanh": {"activation": "hard_tanh"}}
            if mode != "rnn"
            else {}
        ),
        "ln+rec_drop+w_drop": {"layer_norm": True, "recurrent_dropout": 0.25, "weight_drop": 0.3},
    }
    for mode in MODES
}


class UsualLayer(nn.Module):
    """A one-layer RNN/LSTM/GRU with the options, written the usual way: ``nn.Linear`` for the
    input and recurrent products, a Python loop over the steps, autograd for the backward.

    Same function as the rnnlab layer it is built from (``from_rnnlab``), parameters copied.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.mode = layer.mode
        self.gates = {"lstm": 4, "gru": 3}.get(layer.mode, 1)
        size, g = layer.hidden_size, self.gates * layer.hidden_size
        self.ih = nn.Linear(layer.input_size, g)
        self.hh = nn.Linear(size, g)
        with torch.no_grad():
            for lin, kind in ((self.ih, "ih"), (self.hh, "hh")):
                lin.weight.copy_(getattr(layer, f"weight_{kind}_l0"))
                lin.bias.copy_(getattr(layer, f"bias_{kind}_l0"))
        self.opts = layer.options
        self.extra = nn.ParameterDict(
            {
                n.removesuffix("_l0"): nn.Parameter(p.detach().clone())
                for n, p in layer.named_parameters()
                if n.startswith(("ln_", "weight_peephole"))
            }
        )

    def _norm(self, a: torch.Tensor, gain: str) -> torch.Tensor:
        if not self.opts["layer_norm"]:
            return a
        n, size = a.shape[0], a.shape[1] // self.gates
        return F.layer_norm(a.view(n, self.gates, size), (size,)).view(n, -1) * self.extra[gain]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps, n, _ = x.shape
        size = self.hh.weight.shape[1]
        o = self.opts
        train = self.training
        w_hh = F.dropout(self.hh.weight, o["weight_drop"], train) if o["weight_drop"] else self.hh.weight
        mask = (
            F.dropout(x.new_ones(n, size), o["recurrent_dropout"], train) if o["recurrent_dropout"] and train else None
        )
        sg, act = ACTIVATIONS[o["gate_activation"]], ACTIVATIONS[o["activation"]]
        p_h, p_c = o["zoneout"]
        h = x.new_zeros(n, size)
        c = x.new_zeros(n, size)
        outs = []
        for t in range(steps):
            hr = h if mask is None else h * mask
            gx = self._norm(F.linear(x[t], self.ih.weight), "ln_weight_ih") + self.ih.bias
            gh = self._norm(F.linear(hr, w_hh), "ln_weight_hh") + self.hh.bias
            if self.mode == "lstm":
                a_i, a_f, a_g, a_o = (gx + gh).chunk(4, 1)
                if o["peephole"]:
                    w_ci, w_cf, w_co = self.extra["weight_peephole"].chunk(3)
                    a_i, a_f = a_i + w_ci * c, a_f + w_cf * c
                c_new = sg(a_f) * c + sg(a_i) * act(a_g)
                if o["peephole"]:
                    a_o = a_o + w_co * c_new
                cc = c_new
                if o["layer_norm"]:
                    cc = F.layer_norm(c_new, (size,), self.extra["ln_weight_c"], self.extra["ln_bias_c"])
                h_new = sg(a_o) * act(cc)
                c = self._zone(c, c_new, p_c, train)
            elif self.mode == "gru":
                r, z = sg(gx[:, : 2 * size] + gh[:, : 2 * size]).chunk(2, 1)
                nn_ = act(gx[:, 2 * size :] + r * gh[:, 2 * size :])
                h_new = (1 - z) * nn_ + z * h
            else:
                h_new = torch.tanh(gx + gh) if self.mode == "rnn_tanh" else torch.relu(gx + gh)
            h = self._zone(h, h_new, p_h, train)
            outs.append(h)
        return torch.stack(outs), h.unsqueeze(0)

    @staticmethod
    def _zone(prev: torch.Tensor, new: torch.Tensor, p: float, train: bool) -> torch.Tensor:
        if not p:
            return new
        if not train:
            return p * prev + (1 - p) * new
        d = torch.empty_like(new).bernoulli_(p)
        return d * prev + (1 - d) * new


def _check_same_function(layer: nn.Module, usual: nn.Module, x: torch.Tensor) -> None:
    """The usual form computes the rnnlab layer's function: compared in float64 and eval mode on
    copies (in float32 a layer-normalised LSTM amplifies rounding over 200 steps: fused and
    reference differ by 0.03 there, so float32 says nothing about the formulas)."""
    a, b = copy.deepcopy(layer).double().eval(), copy.deepcopy(usual).double().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionFallbackWarning)
        torch.testing.assert_close(b(x.double())[0], a(x.double())[0], atol=1e-8, rtol=1e-8)


def _option_rows(
    modes: list[str], shapes: list[tuple[int, int, int]], args: argparse.Namespace, device: torch.device
) -> None:
    """The --options table (see the module docstring)."""
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, repeats {args.repeats} "
        f"(median), float32; times in ms; ratio = time / plain rnnlab (impl fast) in the same pass"
    )
    head = f"{'mode':5} {'L x N x H':>11} {'option':30} {'pass':9} {'fast':>8} {'ratio':>6} {'fused':>8} {'ratio':>6} {'usual':>8} {'ratio':>6}"
    print(head)
    for mode in modes:
        for steps, batch, size in shapes:
            x = torch.randn(steps, batch, size, device=device)
            xg = x.clone().requires_grad_(True)
            shape = f"{steps}x{batch}x{size}"
            cls_name, kwargs = MODES[mode]
            base: dict[str, float] = {}
            for label, opts in OPTION_ROWS[mode].items():
                torch.manual_seed(args.seed)
                fast = getattr(rnn, cls_name)(size, size, **kwargs, **opts).to(device)
                fused = getattr(rnn, cls_name)(size, size, impl="fused", **kwargs, **opts).to(device)
                fused.load_state_dict(fast.state_dict())
                usual = UsualLayer(fast).to(device)
                _check_same_function(fast, usual, x)
                fast.train()
                with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fast(x)  # in training: does the fast path run every option on?
                fell_back = any(issubclass(w.category, OptionFallbackWarning) for w in caught)
                models = {"fast": fast, "fused": fused, "usual": usual}
                warnings.simplefilter("ignore", OptionFallbackWarning)
                for pass_name, make, train in (("fwd+bwd", _train_step, True), ("inference", _forward, False)):
                    for m in models.values():
                        m.train(train)
                    fns = {k: make(m, xg if train else x) for k, m in models.items()}
                    res = _medians(fns, args.repeats, args.warmup, device, {})
                    if label == "plain":
                        base[pass_name] = res["fast"]
                    tag = label + (" [fused]" if fell_back else "")
                    line = f"{mode:5} {shape:>11} {tag:30} {pass_name:9}"
                    for k in ("fast", "fused", "usual"):
                        line += f" {res[k] * 1e3:8.2f} {res[k] / base[pass_name]:6.2f}"
                    print(line, flush=True)


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"--shapes: expected LxNxH items such as 200x64x64, got {item!r}")
        shapes.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return shapes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--slow-repeats", type=int, default=3, help="repeats for impls other than fast and torch")
    parser.add_argument("--modes", default="lstm,gru,rnn")
    parser.add_argument(
        "--shapes",
        default="200x64x64,200x128x128,500x64x64,200x64x256,100x64x512,200x1x64",
        help="LxNxH,... (H_in = H)",
    )
    parser.add_argument(
        "--impls", default="fast,fast-py", help="rnnlab impls to time (fast, fast-py, fused, reference)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--options",
        action="store_true",
        help="instead, time the cell options (issue 13) per mode against the plain layer (default shape 200x64x64)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing, print torch.profiler tables (5 calls) of impl fast and torch.nn per mode and shape",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: expected names from {sorted(MODES)}, got {m!r}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    shapes = _parse_shapes(args.shapes)
    torch.manual_seed(args.seed)

    if args.options:
        given = any(a.startswith("--shapes") for a in (argv if argv is not None else sys.argv[1:]))
        _option_rows(modes, shapes if given else [(200, 64, 64)], args, device)
        return
    if args.profile:
        _profile_tables(modes, shapes, device)
        return
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"repeats {args.repeats} (median; {args.slow_repeats} for impls other than fast and fast-py), float32; "
        f"times in ms; ratio = rnnlab / torch; {_fast_path(device)}"
    )
    header = f"{'mode':5} {'L x N x H':>12} {'pass':9} {'torch':>9}"
    for impl in impls:
        header += f" {impl:>9} {'ratio':>6}"
    print(header)
    mem_rows = []
    for mode in modes:
        for steps, batch, size in shapes:
            models = _build(mode, size, device, impls)
            x = torch.randn(steps, batch, size, device=device)
            xg = x.clone().requires_grad_(True)
            shape = f"{steps}x{batch}x{size}"
            few = {k: args.slow_repeats for k in models if k not in ("torch", "fast", "fast-py")}
            fwd = _medians({k: _forward(m, x) for k, m in models.items()}, args.repeats, args.warmup, device, few)
            trn = _medians({k: _train_step(m, xg) for k, m in models.items()}, args.repeats, args.warmup, device, few)
            for label, res in (("forward", fwd), ("fwd+bwd", trn)):
                line = f"{mode:5} {shape:>12} {label:9} {res['torch'] * 1e3:9.2f}"
                for impl in impls:
                    line += f" {res[impl] * 1e3:9.2f} {res[impl] / res['torch']:6.2f}"
                print(line, flush=True)
            if not args.no_memory:
                mem = {k: _peak_memory(_train_step(m, xg), device) for k, m in models.items() if k in ("torch", "fast")}
                mem_rows.append((mode, shape, mem))
    if mem_rows:
        print("\npeak memory of one training step (MiB above inputs and parameters); ratio = rnnlab / torch")
        mem_impls = [i for i in impls if i == "fast"]
        header = f"{'mode':5} {'L x N x H':>12} {'torch':>9}"
        for impl in mem_impls:
            header += f" {impl:>9} {'ratio':>6}"
        print(header)
        for mode, shape, mem in mem_rows:
            line = f"{mode:5} {shape:>12} {mem['torch'] / 2**20:9.1f}"
            for impl in mem_impls:
                line += f" {mem[impl] / 2**20:9.1f} {mem[impl] / mem['torch']:6.2f}"
            print(line)


if __name__ == "__main__":
    main()
