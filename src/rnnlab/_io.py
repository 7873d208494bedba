"""Atomic file writes, shared by every package that writes to disk (cache, run directories, reports).

A reader sees the old file or the new one, never half of either: each write goes to a temporary
file in the same folder, which ``os.replace`` then moves into place.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then ``os.replace`` it into place.

    The temporary file ``.<name>.<random>.tmp`` is created (``O_EXCL``, mode 0o666 less the umask)
    inside the ``try``, so an exception raised at any point, including the ``KeyboardInterrupt``
    that a signal handler raises between two bytecodes, removes it: no ``*.tmp`` is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if not (isinstance(err, FileExistsError) and err.filename == os.fspath(tmp)):  # not ours
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, obj: Any, *, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def torch_save(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))
