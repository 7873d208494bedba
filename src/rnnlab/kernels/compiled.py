"""Build and load the compiled CPU time loops (``csrc/rnn_cpu.cpp``), once per machine.

:func:`ops` returns the ``torch.ops.rnnlab_cpu`` namespace, or ``None`` where the compiled
loops are switched off or cannot be built or loaded; the caller (``rnnlab.kernels``) then runs
the Python fast path (``bptt.py``), which gives the same numbers.

* **When.** On the first call in a process (the first CPU forward of an ``rnnlab.nn`` layer),
  not at import.
* **Where.** ``<cache>/kernels/cpu-<torch version>-<key>/rnnlab_cpu.so`` with ``<cache>`` the
  rnnlab cache (``$RNNLAB_CACHE``, else ``~/.cache/rnnlab``: ``rnnlab.data.default_cache_dir``)
  and ``<key>`` a hash of the C++ source, the torch build, the compiler flags, the machine and
  its CPU features (the build uses ``-march=native``). A new torch, source or CPU builds anew.
* **How.** ``torch.utils.cpp_extension.load`` (ninja, the system C++ compiler) in a private
  temporary folder, then one atomic rename into place. A file lock (``fcntl.flock``, released
  if the process dies) makes concurrent processes (``pytest -n 2``, ``compare --jobs 2``) build
  once: the others wait and load the result. One line on stderr announces the build.
* **Failure.** A build error is written to ``<dir>/FAILED`` (with the compiler output) so that
  later processes skip the attempt; every failure gives one ``RuntimeWarning`` per process and
  the Python fast path. Delete the folder to retry.
* **Switch.** ``RNNLAB_COMPILED=0``: never (Python fast path, no warning); ``1``: required
  (a failure raises ``RuntimeError``); unset or ``auto``: use it when it can be had.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

__all__ = [
    "ENV_VAR",
    "SOURCE",
    "mode",
    "ops",
    "cache_dir",
    "cores",
    "ensure_built",
    "NoCompilerError",
    "unavailable_reason",
]

#: The environment variable that switches the compiled loops: ``0``, ``1`` or ``auto``.
ENV_VAR = "RNNLAB_COMPILED"
#: The C++ source, package data of ``rnnlab.kernels``.
SOURCE = "csrc/rnn_cpu.cpp"
_LIB_NAME = "rnnlab_cpu"
_NAMESPACE = "rnnlab_cpu"

_state: dict[str, object] = {}  # "ops" (namespace or None), "error" (why None), "loaded" (library in process)


class NoCompilerError(RuntimeError):
    """No C++ compiler on this machine (the Python fast path runs instead)."""


def mode() -> str:
    """``"0"``, ``"1"`` or ``"auto"`` from ``$RNNLAB_COMPILED`` (anything else is an error)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ("0", "1", "auto"):
        raise ValueError(f"{ENV_VAR} must be 0, 1 or auto, got {value!r}")
    return value


def ops():
    """The compiled ops (``torch.ops.rnnlab_cpu``), or ``None`` (switched off or unavailable).

    Builds them on the first call when needed; later calls cost a dictionary lookup.
    """
    setting = mode()
    if setting == "0":
        return None
    if "ops" not in _state:
        try:
            _state["ops"] = _load()
        except Exception as exc:  # any failure to build or load: the Python path is exact
            _state["ops"] = None
            _state["error"] = f"{type(exc).__name__}: {exc}"
            if setting != "1":
                warnings.warn(
                    f"rnnlab: the compiled CPU kernels are unavailable ({_state['error']}); using the Python "
                    f"fast path (same results, slower). Set {ENV_VAR}=0 to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    if _state["ops"] is None and setting == "1":
        raise RuntimeError(f"rnnlab: {ENV_VAR}=1 but the compiled CPU kernels are unavailable: {_state.get('error')}")
    return _state["ops"]


def unavailable_reason() -> str | None:
    """Why :func:`ops` returned ``None`` in this process (``"NoCompilerError: ..."`` etc.), if it did."""
    error = _state.get("error")
    return None if error is None else str(error)


def cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Cache location and key
# --------------------------------------------------------------------------------------------


def _flags() -> tuple[list[str], list[str]]:
    """(compiler flags, linker flags) for this platform."""
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    cflags = ["-O3"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        cflags.append("-march=native")  # AVX2 / AVX-512 for the row loops; the key holds the CPU flags
    if sys.platform.startswith("linux"):
        return [*cflags, "-fopenmp"], ["-fopenmp"]  # libgomp: the OpenMP runtime torch itself uses
    return cflags, []


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), else the processor name: part of the key for -march=native."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def _source_text() -> str:
    return importlib.resources.files("rnnlab.kernels").joinpath(SOURCE).read_text(encoding="utf-8")


def _folder_name() -> str:
    """``cpu-<torch version>-<key>``: the key hashes everything the library depends on."""
    cflags, ldflags = _flags()
    parts = [
        _source_text(),
        torch.__version__,
        str(torch.version.git_version),
        " ".join(cflags + ldflags),
        sys.platform,
        platform.machine(),
        _cpu_features(),
        os.environ.get("CXX", ""),
    ]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return f"cpu-{torch.__version__.replace('+', '_')}-{key}"


def cache_dir() -> Path:
    """Where this process builds: ``<cache>/kernels/cpu-<torch version>-<key>``."""
    from rnnlab.data import default_cache_dir

    return default_cache_dir() / "kernels" / _folder_name()


def _machine_cache_dir() -> Path:
    """The same build in the default cache (``~/.cache/rnnlab``), also looked in when
    ``$RNNLAB_CACHE`` points elsewhere (a test's private cache need not build again)."""
    return Path.home() / ".cache" / "rnnlab" / "kernels" / _folder_name()


# --------------------------------------------------------------------------------------------
# Build and load
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (blocks while another process holds it; none on Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the cache consistent
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """``ninja`` from the ``ninja`` package on PATH while building (the venv may not be activated)."""
    if shutil.which("ninja") is not None:
        yield
        return
    try:
        import ninja

        extra = ninja.BIN_DIR
    except (ImportError, AttributeError):
        extra = str(Path(sys.executable).parent)
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = extra + os.pathsep + saved
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _library_file(folder: Path) -> Path:
    suffix = ".pyd" if sys.platform == "win32" else ".so"
    return folder / f"{_LIB_NAME}{suffix}"


def _load():
    lib = ensure_built(cache_dir(), _build)
    if not _state.get("loaded"):
        torch.ops.load_library(str(lib))
        _state["loaded"] = True
    return getattr(torch.ops, _NAMESPACE)


def ensure_built(folder: Path, build: Callable[[Path, Path], None]) -> Path:
    """The library of ``folder`` (or of the same build in the machine's default cache), built
    with ``build(folder, library)`` under the folder's lock when neither has it."""
    lib = _library_file(folder)
    for candidate in (lib, _library_file(_machine_cache_dir())):
        if candidate.exists():
            return candidate
    failed = folder / "FAILED"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f"{folder.name}.lock"):
        if failed.exists():
            raise RuntimeError(f"an earlier build failed, see {failed} (delete {folder} to retry)")
        if not lib.exists():  # else another process built it while this one waited
            try:
                build(folder, lib)
            except NoCompilerError:
                raise  # not recorded: installing a compiler is enough to retry
            except Exception as exc:
                folder.mkdir(parents=True, exist_ok=True)
                failed.write_text(f"{type(exc).__name__}: {exc}\n", encoding="utf-8")
                raise
    return lib


def _build(folder: Path, lib: Path) -> None:
    """Compiles into a temporary folder next to ``folder``, then renames the library into place."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if sys.platform != "win32" and shutil.which(compiler) is None:
        raise NoCompilerError(f"no C++ compiler found ({compiler!r} is not on PATH)")
    print(
        f"rnnlab: compiling the CPU kernels for this machine, once (about half a minute), into {folder}",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        src = tmp / "rnn_cpu.cpp"
        src.write_text(_source_text(), encoding="utf-8")
        cflags, ldflags = _flags()
        with _ninja_on_path():
            cpp_extension.load(
                name=_LIB_NAME,
                sources=[str(src)],
                extra_cflags=list(cflags),  # copies: load() appends to the lists it gets
                extra_ldflags=list(ldflags),
                build_directory=str(tmp),
                is_python_module=False,
                verbose=False,
            )
        _state["loaded"] = True  # cpp_extension.load has loaded the library (from tmp)
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".{lib.name}.{os.getpid()}"
        shutil.copyfile(_library_file(tmp), staged)
        os.replace(staged, lib)  # atomic: readers see no file or the whole file
        (folder / "BUILD").write_text(
            f"built in {time.perf_counter() - start:.1f} s; compiler flags {' '.join(cflags)}, linker flags {' '.join(ldflags)}; "
            f"torch {torch.__version__}; source {SOURCE}\n",
            encoding="utf-8",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
