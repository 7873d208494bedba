"""rnnlab._io: atomic writes leave the old file or the new one, and never a temporary file."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from rnnlab import _io


def _run_interrupted_at(n: int, fn) -> int:
    """Run ``fn()``, raising KeyboardInterrupt before its ``n``-th bytecode (counting every traced frame).

    This is where a signal handler's exception can appear in Python code. Returns the number of
    bytecodes counted (so ``n`` past the end runs ``fn`` to completion).
    """
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "opcode":
            count += 1
            if count == n:
                raise KeyboardInterrupt
        return local

    def start(frame, event, arg):
        frame.f_trace_opcodes = True
        return local

    sys.settrace(start)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("writer", ["text", "json"])
def test_an_interrupt_at_any_bytecode_leaves_no_temporary_file(tmp_path, writer):
    target = tmp_path / "run.json"
    target.write_text("old\n")
    new = {"text": "new\n", "json": '{\n  "a": 1\n}\n'}[writer]

    def write():
        if writer == "text":
            _io.write_text(target, "new\n")
        else:
            _io.write_json(target, {"a": 1})

    total = _run_interrupted_at(0, write)
    assert target.read_text() == new and total > 50
    interrupted = 0
    for n in range(1, total + 1):
        target.write_text("old\n")
        try:
            _run_interrupted_at(n, write)
        except KeyboardInterrupt:
            interrupted += 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"], f"interrupt at bytecode {n}"
        assert target.read_text() in ("old\n", new), f"interrupt at bytecode {n}"
    assert interrupted == total


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_new_files_get_the_umask_mode_and_missing_folders_are_made(tmp_path):
    old = os.umask(0o027)
    try:
        _io.write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01")
    finally:
        os.umask(old)
    path = tmp_path / "a" / "b" / "x.bin"
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_taken_temporary_name_is_not_removed(tmp_path, monkeypatch):
    """If the random name already exists (someone else's file), the write fails and leaves it alone."""
    monkeypatch.setattr(_io.secrets, "token_hex", lambda n: "taken")
    other = tmp_path / ".x.json.taken.tmp"
    other.write_text("someone else's")
    with pytest.raises(FileExistsError):
        _io.write_text(tmp_path / "x.json", "{}")
    assert other.read_text() == "someone else's"
    assert not (tmp_path / "x.json").exists()
