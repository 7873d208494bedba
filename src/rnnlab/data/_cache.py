"""Cache helpers: where the cache lives, atomic writes, checksummed array folders, file fingerprints.

A cache entry is a folder ``<cache_dir>/<kind>/<key>/`` holding ``.npy``/``.bin``/``.json`` files and
a ``manifest.json`` with the entry's key and, per file, its size and CRC-32 (and, for ``.npy``
files, shape, dtype and the size and CRC-32 of the ``.npy`` header). An entry is written into a
temporary sibling folder and renamed into place in one ``os.rename``, so a reader sees a complete
entry or none; a reader that finds a manifest that does not match (wrong key or format, missing
file, size, header, shape, dtype or CRC-32 mismatch) treats the entry as absent and the writer
replaces it. CRC-32 detects truncation and corruption (not tampering: the cache is the user's own
folder) at about 1 GB/s.

Memory-mapped arrays (``mapped=True``, the encoded ids) are opened with ``np.load(mmap_mode="c")``
instead of being read, so that a corpus larger than memory costs only the pages a batch touches.
Reading such a file fully on every load to CRC it would defeat the purpose, so its check is:

- on every load: file size, the ``.npy`` header's CRC-32, shape and dtype (catches truncation,
  extension and header damage at no cost), and the full CRC-32 of every small file (lengths,
  labels, vocabulary, manifest-listed);
- the data's full CRC-32 is checked once per file identity: after a successful full check the
  reader records ``(size, mtime_ns, ctime_ns, inode, device)`` in ``verified.json``; a later load
  whose ``stat`` matches skips the full read. Any write to the file through the file system changes
  ``ctime`` (which user code cannot set back), so a match means the bytes are the ones verified.
  A file changed less than ``RACY_SECONDS`` before the check is never stamped (time stamps are
  coarse: a write in the same clock tick would not change them), as git does for "racily clean"
  index entries.

Trade-off: damage that bypasses the file system after the first full check (a failing disk
flipping bits in place) is not detected for the mapped data; everything written through the file
system, every truncation and every header, length or label byte still is.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab._io import write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: dead builders' folders are removed by age only
    fcntl = None

#: Bump when the layout of any cache entry changes: old entries are then ignored.
CACHE_FORMAT = 2

#: A mapped file is stamped as verified only when its last change is at least this old.
RACY_SECONDS = 2.0

_READ_CHUNK = 8 << 20
_STAMPS = "verified.json"


def default_cache_dir() -> Path:
    """``$RNNLAB_CACHE`` if set, else ``~/.cache/rnnlab``."""
    env = os.environ.get("RNNLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rnnlab"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def atomic_write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, indent=1)


def key_digest(key: dict[str, Any]) -> str:
    """A short stable hex digest of a JSON-serialisable key."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def _crc(data: bytes | memoryview, value: int = 0) -> int:
    return zlib.crc32(data, value) & 0xFFFFFFFF


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    )
    return buf.getvalue()


class ArrayWriter:
    """Write one C-ordered ``.npy`` file of a known ``shape`` sequentially, in chunks of rows.

    The CRC-32 is computed from the bytes as they are written, so a multi-GB array needs neither
    to be in memory nor to be read back. ``write(chunk)`` appends ``chunk`` (``(n, *shape[1:])``,
    cast to ``dtype``); ``close()`` checks that exactly ``shape[0]`` rows were written.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype).newbyteorder("<")
        self.header = _npy_header(self.shape, self.dtype)
        self.rows = 0
        self._f = open(self.path, "wb")
        self._f.write(self.header)
        self._crc = _crc(self.header)
        self.meta: dict[str, Any] | None = None

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.shape[1:] != self.shape[1:] or self.rows + chunk.shape[0] > self.shape[0]:
            raise ValueError(
                f"{self.path.name}: chunk of shape {chunk.shape} does not fit rows {self.rows}... of "
                f"an array of shape {self.shape}"
            )
        data = chunk.reshape(-1).view(np.uint8)
        self._f.write(data)
        self._crc = _crc(data, self._crc)
        self.rows += chunk.shape[0]

    def close(self) -> dict[str, Any]:
        if self.meta is None:
            self._f.close()
            if self.rows != self.shape[0]:
                raise ValueError(f"{self.path.name}: {self.rows} rows written, expected {self.shape[0]}")
            self.meta = {
                "size": self.path.stat().st_size,
                "crc32": self._crc,
                "shape": list(self.shape),
                "dtype": self.dtype.str,
                "header_size": len(self.header),
                "header_crc32": _crc(self.header),
            }
        return self.meta

    def abort(self) -> None:
        self._f.close()


class EntryWriter:
    """Build a cache entry in a temporary folder; :meth:`commit` renames it into place atomically.

    Use as a context manager: an exception (or leaving without ``commit``) removes the temporary
    folder, so nothing half-written is ever visible. ``mapped=True`` marks an array that readers
    memory-map (see the module docstring for how it is checked).

    Concurrent writers of one key (two processes encoding the same data at once) each build their
    own ``.<key>.<random>.tmp`` folder; the first rename publishes its entry, and a later writer that
    finds a complete entry for the key published since it started keeps that one and removes its own
    (an entry that was already there when it started, which the caller found stale or corrupt, is
    replaced). While it builds, a writer holds an ``fcntl.flock`` on ``<tmp>/.building``; a new
    writer removes the temporary folders of writers that died (killed mid-build: the kernel released
    their lock) and trash folders (``.<key>.<random>.old``) left by a kill during a replacement.
    """

    #: A temporary folder without a lock file (being created, or made by an older rnnlab) is removed
    #: only when it is at least this old.
    STALE_SECONDS = 3600.0

    def __init__(self, entry: Path, key: dict[str, Any]) -> None:
        self.entry, self.key = Path(entry), key
        self.entry.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_builds(self.entry)
        self._seen = _dir_identity(self.entry)  # the entry the caller found unusable, if any
        self.tmp = self.entry.parent / f".{self.entry.name}.{uuid.uuid4().hex[:8]}.tmp"
        self.tmp.mkdir()
        self._lock_fd = _hold_build_lock(self.tmp)
        self.files: dict[str, dict[str, Any]] = {}
        self._writers: dict[str, tuple[ArrayWriter, bool]] = {}
        self._done = False

    def __enter__(self) -> EntryWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._done:
            self.abort()

    def array(self, name: str, shape: tuple[int, ...], dtype: Any, *, mapped: bool = False) -> ArrayWriter:
        """A sequential writer for ``<name>.npy``."""
        fname = f"{name}.npy"
        if fname in self.files or fname in self._writers:
            raise ValueError(f"cache entry: {fname} written twice")
        w = ArrayWriter(self.tmp / fname, shape, dtype)
        self._writers[fname] = (w, mapped)
        return w

    def put(self, name: str, a: np.ndarray, *, dtype: Any = None, mapped: bool = False) -> None:
        """Write a whole array (cast to ``dtype``, default its own), a few MB of rows at a time."""
        a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError(f"cache entry: {name} must have at least one dimension")
        w = self.array(name, a.shape, dtype or a.dtype, mapped=mapped)
        row_bytes = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * w.dtype.itemsize)
        step = max(1, (16 << 20) // row_bytes)
        for start in range(0, a.shape[0], step):
            w.write(a[start : start + step])
        self.files[f"{name}.npy"] = {**w.close(), "mapped": mapped}
        del self._writers[f"{name}.npy"]

    def blob(self, name: str, data: bytes) -> None:
        (self.tmp / name).write_bytes(data)
        self.files[name] = {"size": len(data), "crc32": _crc(data)}

    def commit(self, info: dict[str, Any] | None = None) -> None:
        """Publish the entry (see the class docstring for what happens when another writer was faster)."""
        for fname, (w, mapped) in list(self._writers.items()):
            self.files[fname] = {**w.close(), "mapped": mapped}
        self._writers.clear()
        manifest = {"format": CACHE_FORMAT, "key": self.key, "files": self.files, "info": info or {}}
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), "utf-8")
        try:  # the build lock is held until the folder is published or removed
            for _ in range(10):
                try:
                    os.rename(self.tmp, self.entry)
                    (self.entry / _BUILDING).unlink(missing_ok=True)
                    break
                except OSError as err:
                    if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                current = _dir_identity(self.entry)
                if current is not None and current != self._seen and read_entry(self.entry, self.key, verify=False):
                    shutil.rmtree(self.tmp, ignore_errors=True)  # another writer published this key first: keep it
                    break
                self._seen = None  # whatever is there now is stale: move it aside, then try again
                trash = self.entry.parent / f".{self.entry.name}.{uuid.uuid4().hex[:8]}.old"
                try:
                    os.rename(self.entry, trash)
                except FileNotFoundError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
            else:
                raise OSError(f"{self.entry}: could not publish the cache entry (it kept changing)")
        finally:
            self._release_lock()
        self._done = True

    def abort(self) -> None:
        for w, _ in self._writers.values():
            w.abort()
        self._writers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._release_lock()
        self._done = True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


_BUILDING = ".building"


def _dir_identity(path: Path) -> tuple[int, int, int] | None:
    """What tells one published entry folder from another: ``(inode, device, mtime_ns)``, or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns)


def _hold_build_lock(folder: Path) -> int | None:
    """Lock ``folder/.building`` for as long as the returned descriptor is open (None without fcntl)."""
    if fcntl is None:
        return None
    fd = os.open(folder / _BUILDING, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _build_is_dead(folder: Path) -> bool:
    """True for the temporary folder of a writer that is gone (its lock is free) or, unlocked, an old one."""
    try:
        fd = os.open(folder / _BUILDING, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > EntryWriter.STALE_SECONDS
        except OSError:
            return False
    except OSError:
        return False
    try:
        if fcntl is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        return True
    finally:
        os.close(fd)


def remove_dead_builds(entry: Path) -> list[Path]:
    """Remove the temporary and trash folders of ``entry``'s key left by writers that were killed."""
    removed = []
    for p in sorted(entry.parent.glob(f".{entry.name}.*")):
        if (p.suffix == ".old" or (p.suffix == ".tmp" and _build_is_dead(p))) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def write_entry(
    entry: Path,
    key: dict[str, Any],
    arrays: dict[str, np.ndarray],
    blobs: dict[str, bytes] | None = None,
    info: dict[str, Any] | None = None,
    mapped: tuple[str, ...] = (),
) -> None:
    """Write a cache entry atomically: arrays (``<name>.npy``), byte blobs and a manifest.

    ``arrays`` are stored as ``.npy`` (those named in ``mapped`` are memory-mapped by readers);
    ``blobs`` as raw files; ``info`` (JSON) is kept in the manifest.
    """
    with EntryWriter(entry, key) as w:
        for name, a in arrays.items():
            w.put(name, a, mapped=name in mapped)
        for name, data in (blobs or {}).items():
            w.blob(name, data)
        w.commit(info)


def _stat_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _file_crc(path: Path) -> int:
    """CRC-32 of a file read in chunks (through the page cache, not into this process's memory)."""
    value = 0
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            value = zlib.crc32(view[:n], value)
    return value & 0xFFFFFFFF


def _check_mapped(
    entry: Path, fname: str, meta: dict[str, Any], stamps: dict[str, Any], verify: bool
) -> tuple[np.ndarray, bool] | None:
    """Open a mapped ``.npy`` after the checks in the module docstring; ``(array, newly_verified)``."""
    path = entry / fname
    stamp = _stat_stamp(path)
    if stamp[0] != meta["size"]:
        return None
    with open(path, "rb") as f:
        header = f.read(meta["header_size"])
    if _crc(header) != meta["header_crc32"]:
        return None
    fresh = False
    if verify and stamps.get(fname) != [*stamp, meta["crc32"]]:
        if _file_crc(path) != meta["crc32"]:
            return None
        fresh = time.time_ns() - stamp[2] > RACY_SECONDS * 1e9  # stamp only a settled file
    arr = np.load(path, mmap_mode="c", allow_pickle=False)
    if list(arr.shape) != meta["shape"] or arr.dtype.str != meta["dtype"]:
        return None
    return arr, fresh


def read_entry(
    entry: Path, key: dict[str, Any], *, verify: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, bytes], dict[str, Any]] | None:
    """Read and verify an entry; ``None`` when absent, stale (other key/format) or corrupt.

    Returns ``(arrays, blobs, info)``; mapped arrays are ``np.memmap`` (copy-on-write: writing into
    one changes this process's copy only, never the file). ``verify=False`` skips the full CRC-32 of
    mapped data (for the writer, which just computed it); every other check still runs.
    """
    entry = Path(entry)
    try:
        manifest = json.loads((entry / "manifest.json").read_text("utf-8"))
        if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
            return None
        try:
            stamps = json.loads((entry / _STAMPS).read_text("utf-8"))
            stamps = stamps if isinstance(stamps, dict) else {}
        except (OSError, ValueError):
            stamps = {}
        arrays: dict[str, np.ndarray] = {}
        blobs: dict[str, bytes] = {}
        verified: dict[str, Any] = {}
        for fname, meta in manifest["files"].items():
            if meta.get("mapped"):
                opened = _check_mapped(entry, fname, meta, stamps, verify)
                if opened is None:
                    return None
                arrays[fname[:-4]] = opened[0]
                if opened[1]:
                    verified[fname] = [*_stat_stamp(entry / fname), meta["crc32"]]
                continue
            data = (entry / fname).read_bytes()
            if len(data) != meta["size"] or _crc(data) != meta["crc32"]:
                return None
            if fname.endswith(".npy"):
                a = np.load(io.BytesIO(data), allow_pickle=False)
                if "shape" in meta and (list(a.shape) != meta["shape"] or a.dtype.str != meta["dtype"]):
                    return None
                arrays[fname[:-4]] = a
            else:
                blobs[fname] = data
        if verified:
            try:
                atomic_write_json(entry / _STAMPS, {**stamps, **verified})
            except OSError:
                pass  # a read-only cache only costs a full check next time
        return arrays, blobs, manifest.get("info", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def file_sha256(path: Path, cache_dir: Path | None = None, *, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file, memoised in ``<cache_dir>/fingerprints.json``.

    The memo is keyed by the resolved path and the file's ``(size, mtime_ns, ctime_ns, inode)``;
    any write to the file changes ``ctime`` (which user code cannot set back), so a memo hit means
    the bytes are those that were hashed. A miss re-hashes (about 0.1 s for the 28 MB archive).
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    memo_path = cache_dir / "fingerprints.json" if cache_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_path is not None:
        try:
            memo = json.loads(memo_path.read_text("utf-8"))
            hit = memo.get(str(path))
            if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
                return hit["sha256"]
        except (OSError, ValueError):
            memo = {}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    if memo_path is not None:
        memo = {k: v for k, v in memo.items() if Path(k).exists()} if len(memo) > 64 else memo
        memo[str(path)] = {"stamp": stamp, "sha256": digest}
        try:
            atomic_write_json(memo_path, memo)
        except OSError:
            pass  # a read-only cache folder only costs a re-hash next time
    return digest
