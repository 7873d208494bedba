"""rnnlab.kernels.compiled and .native: the compiled time loops against the Python fast path
(threads, partitions, chunked no-grad projection), and the loader (switch, cache, lock, fallback)."""

from __future__ import annotations

import importlib.resources
import itertools
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from kernel_paths import require_compiled
from test_bptt import MODES, TOL, _inputs, _loss

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from rnnlab import kernels
from rnnlab.kernels import bptt, compiled

REPO = Path(__file__).resolve().parents[2]


def _compare_paths(mode, dtype, steps, batch, h_in, hid, lengths, seed=0, weight_tol=None) -> None:
    """native.layer vs bptt.layer: outputs, states and every gradient, training and no grad
    (weights scaled so that the recurrence neither explodes nor vanishes over the steps).
    ``weight_tol``: for the weight and bias gradients (sums over all L*N rows), default TOL."""
    from rnnlab.kernels import native

    tol = TOL[dtype]
    weight_tol = weight_tol or tol
    for reverse in (False, True):
        inputs = _inputs(mode, dtype, True, steps=steps, batch=batch, h_in=h_in, hid=hid, seed=seed, w_scale=0.2)
        names = [k for k, t in zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"), inputs) if t is not None]
        leaves = [t for t in inputs if t is not None]
        results = []
        for fn in (native.layer, bptt.layer):
            out, h_n, c_n = fn(mode, *inputs, None, reverse, lengths)
            gen = torch.Generator().manual_seed(5)
            weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype) for t in (out, h_n, h_n)]
            grads = torch.autograd.grad(_loss(out, h_n, c_n, weights), leaves)
            with torch.no_grad():
                inference = fn(mode, *inputs, None, reverse, lengths)
            results.append(((out, h_n, c_n), grads, inference))
        (state, grads, inference), (p_state, p_grads, p_inference) = results
        case = f"{mode} {dtype} L={steps} N={batch} reverse={reverse} lengths={lengths is not None}"
        for got, want, what in ((state, p_state, "training"), (inference, p_state, "no grad")):
            for name, a, b in zip(("out", "h_n", "c_n"), got, want):
                if b is None:
                    assert a is None
                    continue
                torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{case} {what} {name}: {m}")
        for name, a, b in zip(names, grads, p_grads):
            t = weight_tol if name[0] in "wb" else tol
            torch.testing.assert_close(a, b, atol=t, rtol=t, msg=lambda m: f"{case} grad of {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_compiled_matches_python_across_threads(mode: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """37 rows split into 1 and 4 partitions (threads), with and without lengths (unsorted,
    with ties and length-1 rows), 20 steps (projection chunks of 16 and 4). Float32 weight
    gradients, sums of 740 rows' products whose float32 rounding differs (bias added in the
    row pass instead of the GEMM), agree to 1e-4; everything else to 1e-5 (float64: 1e-10)."""
    require_compiled()
    monkeypatch.setattr(compiled, "cores", lambda: 4)
    lengths = torch.tensor([(7 * k) % 20 + 1 for k in range(37)])
    lengths[5] = 20
    threads = torch.get_num_threads()
    try:
        for n_threads, lens in itertools.product((1, 4), (None, lengths)):
            torch.set_num_threads(n_threads)
            weight_tol = 1e-4 if dtype == torch.float32 else None
            _compare_paths(mode, dtype, steps=20, batch=37, h_in=5, hid=11, lengths=lens, weight_tol=weight_tol)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_compiled_matches_python_small(mode: str, dtype: torch.dtype) -> None:
    """The parity tests' sizes (7 steps, 5 rows, unsorted lengths): 1e-5 / 1e-10 everywhere."""
    require_compiled()
    for lengths in (None, torch.tensor([7, 3, 7, 1, 5])):
        _compare_paths(mode, dtype, steps=7, batch=5, h_in=3, hid=4, lengths=lengths, seed=9)


@pytest.mark.parametrize("mode", MODES)
def test_compiled_batch_of_one_and_long_sequence(mode: str) -> None:
    """One row (what ``predict`` runs) over 40 steps: projection chunks of 16, 16, 8."""
    require_compiled()
    _compare_paths(mode, torch.float64, steps=40, batch=1, h_in=3, hid=6, lengths=None, seed=4)


@pytest.mark.parametrize("mode", MODES)
def test_compiled_large_input_weight(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """W_ih above 256 KiB (600 inputs, hidden 64, float64): the input projections of all steps
    are one GEMM before the loop (training and no grad), with 1 and 2 partitions."""
    require_compiled()
    monkeypatch.setattr(compiled, "cores", lambda: 2)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            lengths = torch.tensor([6, 2, 5, 6, 1, 3, 6, 4, 2, 5, 6, 6, 1, 2, 3, 6])
            _compare_paths(mode, torch.float64, steps=6, batch=16, h_in=600, hid=64, lengths=lengths, seed=8)
    finally:
        torch.set_num_threads(threads)


def test_compiled_partitions_balance_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of very unequal length (16 of length 40, 64 of length 1) split into spans of equal
    work, at most 64 rows each: 2 spans run by 1 thread in turn, or by 2 threads."""
    require_compiled()
    monkeypatch.setattr(compiled, "cores", lambda: 2)
    lengths = torch.tensor([40] * 16 + [1] * 64)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            _compare_paths("lstm", torch.float64, steps=40, batch=80, h_in=4, hid=5, lengths=lengths, seed=6)
    finally:
        torch.set_num_threads(threads)


def test_compiled_op_rejects_bad_batch_sizes() -> None:
    require_compiled()
    ops = compiled.ops()
    x, h0, c0, w_ih, w_hh, b_ih, _ = (
        t.detach() if t is not None else None for t in _inputs("lstm", torch.float32, True)
    )
    with pytest.raises(RuntimeError, match="batch_sizes must be non-increasing"):
        ops.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, [5, 5, 6, 4, 4, 2, 1], False, False, 1, 0)
    with pytest.raises(RuntimeError, match="batch_sizes must have 7 entries, got 2"):
        ops.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, [5, 5], False, False, 1, 0)
    with pytest.raises(RuntimeError, match=r"w_hh must be \(16, 4\)"):
        ops.lstm_forward(x, h0, c0, w_ih, w_hh[:8], b_ih, [], False, False, 1, 0)


def test_switch_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    assert compiled.ops() is None
    assert (
        kernels.layer_function(
            "lstm", torch.device("cpu"), torch.float32, has_lengths=False, has_proj=False, training=True
        )
        is bptt.layer
    )
    monkeypatch.setenv(compiled.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="RNNLAB_COMPILED must be 0, 1 or auto, got 'yes'"):
        compiled.ops()


def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fresh cache and home (no build to be found) and a fresh loader state."""
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(compiled, "_state", {})


def test_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A recorded failed build: one warning per process, the Python path, no new build; with
    RNNLAB_COMPILED=1 an error instead."""
    _isolated_cache(monkeypatch, tmp_path)
    monkeypatch.delenv(compiled.ENV_VAR, raising=False)
    folder = compiled.cache_dir()
    folder.mkdir(parents=True)
    (folder / "FAILED").write_text("CalledProcessError: compiler error\n")
    with pytest.warns(RuntimeWarning, match="compiled CPU kernels are unavailable .*an earlier build failed"):
        assert compiled.ops() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        fn = kernels.layer_function(
            "gru", torch.device("cpu"), torch.float64, has_lengths=True, has_proj=False, training=False
        )
    assert fn is bptt.layer
    monkeypatch.setenv(compiled.ENV_VAR, "1")
    with pytest.raises(RuntimeError, match="RNNLAB_COMPILED=1 but the compiled CPU kernels are unavailable"):
        compiled.ops()


def test_concurrent_builds_build_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two builders at once (two test workers): one builds under the lock, the other waits and
    gets the same library; a failure is recorded (except a missing compiler) and not retried."""
    _isolated_cache(monkeypatch, tmp_path)
    folder = compiled.cache_dir()
    calls: list[float] = []

    def fake_build(where: Path, lib: Path) -> None:
        calls.append(time.perf_counter())
        time.sleep(0.3)
        where.mkdir(parents=True, exist_ok=True)
        lib.write_bytes(b"library")

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(compiled.ensure_built(folder, fake_build))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 2 and results[0] == results[1] and results[0].read_bytes() == b"library"

    other = folder.with_name(folder.name + "-x")

    def no_compiler(where: Path, lib: Path) -> None:
        raise compiled.NoCompilerError("no C++ compiler found")

    with pytest.raises(compiled.NoCompilerError):
        compiled.ensure_built(other, no_compiler)
    assert not (other / "FAILED").exists()

    def broken(where: Path, lib: Path) -> None:
        raise OSError("compiler crashed")

    with pytest.raises(OSError, match="compiler crashed"):
        compiled.ensure_built(other, broken)
    assert (other / "FAILED").read_text() == "OSError: compiler crashed\n"
    with pytest.raises(RuntimeError, match="an earlier build failed"):
        compiled.ensure_built(other, fake_build)
    assert len(calls) == 1


def test_cache_key_and_package_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The build folder lives in $RNNLAB_CACHE/kernels and is named by torch version and a
    key; the C++ source is read as package data (so a wheel has it)."""
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path))
    folder = compiled.cache_dir()
    assert folder.parent == tmp_path / "kernels"
    assert (
        folder.name.startswith(f"cpu-{torch.__version__.replace('+', '_')}-") and len(folder.name.split("-")[-1]) == 16
    )
    source = importlib.resources.files("rnnlab.kernels").joinpath(compiled.SOURCE).read_text()
    assert "TORCH_LIBRARY(rnnlab_cpu" in source
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "csrc/*.cpp" in config["tool"]["setuptools"]["package-data"]["rnnlab.kernels"]
    assert any(dep.startswith("ninja") for dep in config["project"]["dependencies"])


def test_compiled_layer_needs_cpu_and_the_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab.kernels import native

    inputs = _inputs("rnn_tanh", torch.float32, True)
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    with pytest.raises(RuntimeError, match="compiled CPU kernels are unavailable or switched off"):
        with torch.no_grad():
            native.layer("rnn_tanh", *inputs, None, False, None)
