"""The encoded cache under concurrent writers, with real processes: a race for one entry, a writer killed by -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnlab.data import TextDataset, encode_dataset
from rnnlab.data._cache import read_entry, remove_dead_builds

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks and SIGKILL")

# A child process: encode the same generated dataset into CACHE. Before it commits (HOLD=commit) or in the
# middle of writing the arrays (HOLD=build), it writes MARK and waits until GO exists: the parent decides
# when both racers publish, or kills a builder with SIGKILL while it holds a half-written folder.
CHILD = r"""
import hashlib, json, os, sys, time
from pathlib import Path
from rnnlab.data import TextDataset, TextSplit, encode_dataset
from rnnlab.data import _cache

cache, hold, mark, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])

def wait():
    mark.write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("GO never came")
        time.sleep(0.01)

if hold == "commit":
    real_commit = _cache.EntryWriter.commit
    def commit(self, info=None):
        wait()
        return real_commit(self, info)
    _cache.EntryWriter.commit = commit
elif hold == "build":
    real_put = _cache.EntryWriter.put
    def put(self, name, a, **kw):
        real_put(self, name, a, **kw)
        if name == "train_ids":
            wait()
    _cache.EntryWriter.put = put

exec(Path(sys.argv[5]).read_text())  # defines dataset() and digest()
data = encode_dataset(dataset(), max_words=50, max_len=12, cache_dir=cache, progress=False, workers=0)
print(json.dumps({"digest": digest(data), "from_cache": data.from_cache}))
"""

SHARED = r"""
import hashlib
import random

def dataset():
    rng = random.Random(4)
    words = ["good", "bad", "film", "plot", "fine", "dull", "the", "a", "story", "cast"]
    def split(n, seed):
        r = random.Random(seed)
        return TextSplit([" ".join(r.choice(words) for _ in range(r.randint(2, 20))) for _ in range(n)],
                         [i % 2 for i in range(n)])
    return TextDataset(split(300, 1), split(80, 2), ["neg", "pos"], "race", "race-fingerprint")

def digest(data):
    h = hashlib.sha256()
    for name, sp in data.splits().items():
        for t in (sp.ids, sp.lengths, sp.labels, sp.num_tokens):
            h.update(name.encode())
            h.update(t.contiguous().numpy().tobytes())
    h.update(repr(data.vocab.itos).encode())
    return h.hexdigest()
"""


def _shared(tmp_path: Path) -> Path:
    path = tmp_path / "shared.py"
    path.write_text("from rnnlab.data import TextDataset, TextSplit\n" + SHARED)
    return path


def _reference(tmp_path: Path) -> str:
    scope: dict = {}
    exec(_shared(tmp_path).read_text(), scope)
    data = encode_dataset(scope["dataset"](), max_words=50, max_len=12, use_cache=False, progress=False, workers=0)
    return scope["digest"](data)


def _start(tmp_path: Path, cache: Path, hold: str, name: str, go: str = "go") -> tuple[subprocess.Popen, Path]:
    mark = tmp_path / f"{name}.mark"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cache), hold, str(mark), str(tmp_path / go), str(_shared(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, mark


def _wait_for(paths: list[Path], procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"child ended early: {proc.communicate()}")
        assert time.monotonic() < deadline, "children never reached the hold point"
        time.sleep(0.02)


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "encoded").iterdir())


def _check_entry(cache: Path) -> None:
    (entry,) = (cache / "encoded").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert read_entry(entry, manifest["key"], verify=True) is not None  # every size and CRC-32 holds
    stamps = {"verified.json"}  # written by a reader once a mapped file is settled
    assert {p.name for p in entry.iterdir()} - stamps == {*manifest["files"], "manifest.json"}


def test_two_processes_building_one_entry_both_end_with_the_correct_entry(tmp_path):
    expected = _reference(tmp_path)
    cache = tmp_path / "cache"
    racers = [_start(tmp_path, cache, "commit", f"racer{i}") for i in range(2)]
    _wait_for([mark for _, mark in racers], [p for p, _ in racers])  # both built their folder, neither published
    assert len([p for p in (cache / "encoded").iterdir() if p.name.endswith(".tmp")]) == 2
    (tmp_path / "go").write_text("")
    results = []
    for proc, _ in racers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["digest"] for r in results] == [expected, expected]
    # one entry, no temporary or trash folder, and it holds what its manifest says
    assert len(_entries(cache)) == 1 and not _entries(cache)[0].startswith(".")
    _check_entry(cache)
    again = encode_dataset(_dataset_from(tmp_path), max_words=50, max_len=12, cache_dir=cache, progress=False)
    assert again.from_cache


def test_the_later_writer_keeps_the_entry_published_first(tmp_path):
    """Both built their folder; the first publishes; the second finds a whole entry for the key and keeps it
    (replacing it would pull the files from under the first process's reads)."""
    expected = _reference(tmp_path)
    cache = tmp_path / "cache"
    first, second = (_start(tmp_path, cache, "commit", name, go=f"go-{name}") for name in ("first", "second"))
    _wait_for([first[1], second[1]], [first[0], second[0]])
    (tmp_path / "go-first").write_text("")
    out_first, err = first[0].communicate(timeout=120)
    assert first[0].returncode == 0, err
    (entry,) = [p for p in (cache / "encoded").iterdir() if not p.name.startswith(".")]
    published = entry.stat().st_ino
    (tmp_path / "go-second").write_text("")
    out_second, err = second[0].communicate(timeout=120)
    assert second[0].returncode == 0, err
    assert entry.stat().st_ino == published  # the first entry stayed; the second folder was dropped
    assert [json.loads(o.splitlines()[-1])["digest"] for o in (out_first, out_second)] == [expected, expected]
    assert _entries(cache) == [entry.name]
    _check_entry(cache)


def _dataset_from(tmp_path: Path) -> TextDataset:
    scope: dict = {}
    exec(_shared(tmp_path).read_text(), scope)
    return scope["dataset"]()


def test_a_builder_killed_by_sigkill_leaves_nothing_that_blocks_or_stays(tmp_path):
    expected = _reference(tmp_path)
    cache = tmp_path / "cache"
    victim, mark = _start(tmp_path, cache, "build", "victim")
    _wait_for([mark], [victim])  # it has written train_ids.npy into its temporary folder
    (stale,) = [p for p in (cache / "encoded").iterdir() if p.name.endswith(".tmp")]
    assert (stale / "train_ids.npy").is_file()
    # while it lives, its folder is not touched by another writer's clean-up
    entry = cache / "encoded" / stale.name.split(".")[1]
    assert remove_dead_builds(entry) == [] and stale.is_dir()
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL and stale.is_dir()
    data = encode_dataset(_dataset_from(tmp_path), max_words=50, max_len=12, cache_dir=cache, progress=False)
    scope: dict = {}
    exec(_shared(tmp_path).read_text(), scope)
    assert scope["digest"](data) == expected and not data.from_cache
    assert not stale.exists() and len(_entries(cache)) == 1  # the dead builder's folder is gone
    _check_entry(cache)


def test_a_stale_entry_found_at_the_start_is_replaced(tmp_path):
    expected = _reference(tmp_path)
    cache = tmp_path / "cache"
    encode_dataset(_dataset_from(tmp_path), max_words=50, max_len=12, cache_dir=cache, progress=False)
    (entry,) = (cache / "encoded").iterdir()
    ids = entry / "train_ids.npy"
    raw = bytearray(ids.read_bytes())
    raw[-1] ^= 0xFF  # corrupt the last id byte: only the full CRC-32 sees it
    ids.write_bytes(bytes(raw))
    (entry / "verified.json").unlink(missing_ok=True)
    rebuilt = encode_dataset(_dataset_from(tmp_path), max_words=50, max_len=12, cache_dir=cache, progress=False)
    scope: dict = {}
    exec(_shared(tmp_path).read_text(), scope)
    assert not rebuilt.from_cache and scope["digest"](rebuilt) == expected
    assert len(_entries(cache)) == 1
    _check_entry(cache)
