"""Cache helpers: where the cache lives, atomic writes, checksummed array folders, file fingerprints.

A cache entry is a folder ``<cache_dir>/<kind>/<key>/`` holding ``.npy``/``.bin``/``.json`` files and
a ``manifest.json`` with the entry's key and the size and CRC-32 of every file. An entry is written
into a temporary sibling folder and renamed into place in one ``os.rename``, so a reader sees a
complete entry or none; a reader that finds a manifest that does not match (wrong key or format,
missing file, size or CRC-32 mismatch) treats the entry as absent and the writer replaces it.
CRC-32 detects truncation and corruption (not tampering: the cache is the user's own folder) at
about 1 GB/s, so checking a full IMDB entry on every load costs tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rnnlab._io import write_json

#: Bump when the layout of any cache entry changes: old entries are then ignored.
CACHE_FORMAT = 1


class DataError(ValueError):
    """Bad input data (missing or malformed file, empty split, ...): the message names the file or row."""


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


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def write_entry(entry: Path, key: dict[str, Any], arrays: dict[str, np.ndarray],
                blobs: dict[str, bytes] | None = None, info: dict[str, Any] | None = None) -> None:
    """Write a cache entry atomically: raw arrays (``<name>.npy``), byte blobs and a manifest.

    ``arrays`` are stored as ``.npy``; ``blobs`` as raw files; ``info`` (JSON) is kept in the manifest.
    """
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, a in arrays.items():
            fname = f"{name}.npy"
            np.save(tmp / fname, np.ascontiguousarray(a), allow_pickle=False)
            data = (tmp / fname).read_bytes()
            files[fname] = {"size": len(data), "crc32": _crc(data)}
        for name, data in (blobs or {}).items():
            (tmp / name).write_bytes(data)
            files[name] = {"size": len(data), "crc32": _crc(data)}
        manifest = {"format": CACHE_FORMAT, "key": key, "files": files, "info": info or {}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), "utf-8")
        if entry.exists():  # stale or corrupt entry: move it aside, then replace
            trash = entry.parent / f".{entry.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.exists():  # not a lost race with another writer
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_entry(entry: Path, key: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, bytes], dict[str, Any]] | None:
    """Read and verify an entry; ``None`` when absent, stale (other key/format) or corrupt.

    Returns ``(arrays, blobs, info)``.
    """
    entry = Path(entry)
    try:
        manifest = json.loads((entry / "manifest.json").read_text("utf-8"))
        if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
            return None
        arrays: dict[str, np.ndarray] = {}
        blobs: dict[str, bytes] = {}
        for fname, meta in manifest["files"].items():
            data = (entry / fname).read_bytes()
            if len(data) != meta["size"] or _crc(data) != meta["crc32"]:
                return None
            if fname.endswith(".npy"):
                arrays[fname[:-4]] = _load_npy(data)
            else:
                blobs[fname] = data
        return arrays, blobs, manifest.get("info", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _load_npy(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)


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
