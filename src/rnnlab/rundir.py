"""Run directories and comparison folders: the one module that knows their files and formats.

``rnnlab.train`` writes run directories, ``rnnlab.experiments`` writes comparison folders of
them, ``rnnlab.report`` reads both; all of them go through :class:`RunDir` and
:class:`ComparisonDir`. This module imports no torch at load time (checkpoints import it when
used), so reading a run for a report stays light.

A run directory::

    RUN_DIR/
      .lock                  while a process writes the run: the holder's pid (fcntl.flock; see DirLock)
      config.toml            the resolved config (rnnlab.train.config writes and parses the text)
      run.json               {"format", "rnnlab_version", "status", "epochs_completed", "epochs", ...}
      vocab.json             the Vocabulary;   tokenizer.json: the Tokenizer's settings and version
      metrics.jsonl          one JSON object per completed epoch, appended (see scan_metrics)
      checkpoints/last.pt    the commit point: everything a resume needs (model, optimizer, rng, history)
      checkpoints/best.pt    a copy of last.pt from the epoch with the best selection metric
      checkpoints/epoch_{k}.pt   (keep_epoch_checkpoints) the weights after epoch k; epoch_0: at initialisation
      test.json              (test_every_epoch = false) the one test pass, on best.pt
      model.txt, train.log, tensorboard/

Status (run.json): ``running`` while training; then ``complete``, ``failed`` (an error; run.json
``error`` says which) or ``interrupted`` (Ctrl-C, SIGTERM); a resume goes back to ``running``
(:data:`TRANSITIONS`).

An epoch is committed in this order (:meth:`RunDir.commit_epoch`): ``epoch_{k}.pt``, then
``last.pt`` (the commit point: a resume continues from it), then ``best.pt`` (a copy of
last.pt, when the epoch improved), the metrics row, run.json. Every file but metrics.jsonl is
replaced atomically (``rnnlab._io``); a metrics row is appended in one write and, if the write
fails, cut back off. After an error, :meth:`RunDir.settle` makes metrics.jsonl, best.pt and
run.json agree with last.pt again, so the files always describe one state a resume continues
from. A write that fails with an ``OSError`` (a full disk, a permission) raises a
:class:`~rnnlab.errors.RunDirError` naming the file, and leaves the previous version in place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlab import __version__
from rnnlab._io import atomic_write, torch_save, write_json, write_text
from rnnlab.errors import DirectoryInUseError, ReportError, RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; directories are not locked there
    fcntl = None

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The run-directory format this rnnlab writes (run.json "format", checkpoints' "format").
#: 2: config key ``encoder`` (was ``impl``), status ``interrupted``, metrics appended, epoch checkpoints.
FORMAT = 2
#: Formats this rnnlab reads (a format-1 run is resumed, evaluated and reported as before).
READABLE_FORMATS = (1, 2)
#: Every status of run.json, and the ones each may change to (None: no run.json yet).
TRANSITIONS: dict[str | None, tuple[str, ...]] = {
    None: ("running", "complete"),  # a baseline is written complete at once
    "running": ("running", "complete", "failed", "interrupted"),
    "failed": ("running", "failed", "complete"),
    "interrupted": ("running", "interrupted", "complete"),
    "complete": ("running", "complete"),  # resumed for more epochs; its one test pass added
}
STATUSES = ("running", "complete", "failed", "interrupted")


def _writing_error(path: Path, err: OSError) -> RunDirError:
    why = err.strerror or str(err)
    code = f"[Errno {err.errno}] " if err.errno else ""
    hint = {errno.ENOSPC: " (the disk is full)", errno.EDQUOT: " (disk quota exceeded)"}.get(err.errno or 0, "")
    return RunDirError(f"cannot write {path}: {code}{why}{hint}")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` of a write to ``path`` into a RunDirError that names the file (one line)."""
    try:
        yield
    except OSError as err:
        raise _writing_error(path, err) from err


# ----------------------------------------------------------------------------- the lock


class DirLock:
    """An exclusive, per-process lock on a directory: ``DIR/.lock``, held with ``fcntl.flock``.

    ``acquire`` refuses at once (no waiting) with a :class:`DirectoryInUseError` that names the
    directory and the holder's pid when another process holds it. The kernel drops a flock when
    its holder dies, even by ``kill -9``, so a lock file left by a killed process never blocks.
    The file holds the holder's pid (for the message) and is removed on release; acquiring checks
    that the file it locked is still the one at ``DIR/.lock`` (another process may have removed it
    meanwhile) and retries otherwise. Not on Windows (no ``fcntl``): there nothing is locked.
    """

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike, *, what: str = "run directory") -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        if self._fd is not None or fcntl is None:
            return self
        with writing(self.path):  # a read-only folder: "cannot write DIR/.lock: [Errno 13] ..."
            self.directory.mkdir(parents=True, exist_ok=True)
            return self._acquire()

    def _acquire(self) -> DirLock:
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                holder = f"rnnlab process {pid}" if pid else "another process"
                raise DirectoryInUseError(
                    f"{self.directory} is in use: {holder} is writing this {self.what} (lock file {self.path}); "
                    "wait for it to finish or stop it, then run the command again",
                    path=self.directory,
                    pid=pid,
                ) from None
            if _same_file(fd, self.path):
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    os.close(fd)
                    raise
                self._fd = fd
                return self
            os.close(fd)  # the file was removed (or replaced) between open and flock: lock the new one
        raise RunDirError(f"{self.path}: could not take the lock (the lock file keeps changing)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()  # still held: nobody can lock the file until it is gone
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    @classmethod
    def holder(cls, directory: str | os.PathLike) -> int | None:
        """The pid in ``DIR/.lock`` when a live process holds it, else None."""
        path = Path(directory) / cls.NAME
        if fcntl is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or None
        finally:
            os.close(fd)
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _read_pid(fd: int) -> int | None:
    """The pid in a lock file (the holder writes it just after locking: a few short retries)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


# ----------------------------------------------------------------------------- metrics


@dataclass
class MetricsScan:
    """What ``metrics.jsonl`` holds: ``rows`` (one per epoch, sorted; a later row for an epoch replaces
    an earlier one) and, when its last line was cut short by a kill mid-write, that line's number
    (``partial_line``) and byte offset (``partial_offset``); the cut line is not in ``rows``."""

    rows: list[dict[str, Any]]
    partial_line: int | None = None
    partial_offset: int | None = None
    missing_newline: bool = False

    @property
    def problem(self) -> str | None:
        if self.partial_line is None:
            return None
        return f"metrics.jsonl line {self.partial_line} is cut short (a write was interrupted)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_row(text: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{where}: not valid JSON ({err}); the file is damaged") from None
    if not isinstance(row, dict) or not _is_number(row.get("epoch")):
        raise RunDirError(f"{where}: expected a JSON object with a numeric 'epoch', got {text[:60]!r}")
    return row


# ----------------------------------------------------------------------------- the run directory


class RunDir:
    """One run directory: its paths, run.json, metrics.jsonl, checkpoints, status and lock.

    ``RunDir(path)`` touches nothing; ``info`` is run.json as last read or written through this
    object (None before). Every write of a file that a failure could leave half-done (a full disk,
    a permission) raises :class:`RunDirError` naming it, with the previous version kept.
    """

    CONFIG = "config.toml"
    INFO = "run.json"
    METRICS = "metrics.jsonl"
    VOCAB = "vocab.json"
    TOKENIZER = "tokenizer.json"
    MODEL_TEXT = "model.txt"
    LOG = "train.log"
    TEST = "test.json"
    CHECKPOINTS = "checkpoints"
    TENSORBOARD = "tensorboard"
    LOCK = DirLock.NAME

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # -- paths and state

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def info_path(self) -> Path:
        return self.path / self.INFO

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def vocab_path(self) -> Path:
        return self.path / self.VOCAB

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.TOKENIZER

    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    @property
    def test_path(self) -> Path:
        return self.path / self.TEST

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    def is_run(self) -> bool:
        """True when the folder holds run.json (what makes a folder a run directory)."""
        return self.info_path.is_file()

    def is_empty(self) -> bool:
        """True for a missing folder or one holding nothing but the lock file."""
        if not self.path.is_dir():
            return not self.path.exists()
        return all(p.name == self.LOCK for p in self.path.iterdir())

    def lock(self) -> DirLock:
        """The directory's lock (``with rd.lock(): ...``); see :class:`DirLock`."""
        return DirLock(self.path, what="run directory")

    def clear(self) -> None:
        """Remove everything in the directory except the lock file (for ``--overwrite``)."""
        for p in self.path.iterdir():
            if p.name == self.LOCK:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    # -- run.json and its status

    def read_info(self, *, check_format: bool = True) -> dict[str, Any]:
        """run.json as a dict; ``check_format``: refuse a format this rnnlab does not read."""
        if not self.info_path.exists():
            raise RunDirError(f"{self.path} is not a run directory: no run.json (written by `rnnlab train`)")
        info = self._read_json(self.info_path)
        if check_format and info.get("format") not in READABLE_FORMATS:
            raise RunDirError(
                f"{self.path} was written by rnnlab {info.get('rnnlab_version', '?')} in run-directory format "
                f"{info.get('format')!r}; this rnnlab ({__version__}) reads format "
                + " and ".join(map(str, READABLE_FORMATS))
            )
        self.info = info
        return info

    def describe(self) -> str:
        """``a run (complete, 2/5 epochs)`` or ``files`` (for messages about an occupied folder)."""
        try:
            info = self._read_json(self.info_path) if self.info_path.exists() else None
        except RunDirError:
            info = None
        if not info:
            return "files"
        return f"a run ({info.get('status')}, {info.get('epochs_completed')}/{info.get('epochs')} epochs)"

    def write_info(self, info: dict[str, Any]) -> None:
        """Write run.json (format and version filled in); its status must follow :data:`TRANSITIONS`."""
        status = info.get("status")
        before = self.info.get("status") if self.info is not None else self._status_on_disk()
        if status not in STATUSES or status not in TRANSITIONS.get(before, ()):
            raise RunDirError(f"{self.info_path}: status {before!r} cannot change to {status!r}")
        info = {"rnnlab_version": __version__, "format": FORMAT, **info}
        info["format"], info["rnnlab_version"] = FORMAT, __version__
        with writing(self.info_path):
            write_json(self.info_path, info)
        self.info = info

    def update_info(self, **fields: Any) -> dict[str, Any]:
        """run.json with ``fields`` changed (``None`` removes a key); returns it."""
        info = dict(self.info if self.info is not None else self.read_info())
        for key, value in fields.items():
            if value is None:
                info.pop(key, None)
            else:
                info[key] = value
        self.write_info(info)
        return info

    def _status_on_disk(self) -> str | None:
        try:
            return self._read_json(self.info_path).get("status") if self.info_path.exists() else None
        except RunDirError:
            return None

    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as fh:
                obj = json.load(fh)
        except json.JSONDecodeError as err:
            raise RunDirError(f"{path}: not valid JSON ({err})") from None
        except OSError as err:
            raise RunDirError(f"{path}: cannot read it ({err.strerror or err})") from None
        if not isinstance(obj, dict):
            raise RunDirError(f"{path}: expected a JSON object, got {type(obj).__name__}")
        return obj

    # -- the other small files

    def write_config(self, toml_text: str) -> None:
        with writing(self.config_path):
            write_text(self.config_path, toml_text)

    def read_config_values(self) -> dict[str, Any]:
        """config.toml as a dict of raw values (``rnnlab.train.config`` turns it into a Config)."""
        try:
            with open(self.config_path, "rb") as fh:
                return tomllib.load(fh)
        except FileNotFoundError:
            raise RunDirError(f"{self.config_path} not found: the run directory is incomplete") from None
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise RunDirError(f"{self.config_path}: not readable TOML ({err})") from None

    def write_vocab(self, vocab: Any) -> None:
        """``vocab.save`` into vocab.json (the data package owns its format)."""
        with writing(self.vocab_path):
            vocab.save(self.vocab_path)

    def write_tokenizer(self, settings: dict[str, Any]) -> None:
        with writing(self.tokenizer_path):
            write_json(self.tokenizer_path, settings)

    def read_tokenizer(self) -> dict[str, Any]:
        if not self.tokenizer_path.exists():
            raise RunDirError(f"{self.tokenizer_path} not found: the run directory is incomplete")
        return self._read_json(self.tokenizer_path)

    def write_model_text(self, text: str) -> None:
        with writing(self.path / self.MODEL_TEXT):
            write_text(self.path / self.MODEL_TEXT, text)

    def write_test(self, test: dict[str, Any]) -> None:
        with writing(self.test_path):
            write_json(self.test_path, test)

    def start_log(self) -> None:
        """An empty train.log (a fresh run)."""
        with writing(self.log_path):
            write_text(self.log_path, "")

    def append_log(self, line: str) -> None:
        with writing(self.log_path), open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    # -- metrics.jsonl: one reader, one writer

    def scan_metrics(self) -> MetricsScan:
        """Read metrics.jsonl (missing: no rows). A cut-short last line (a kill mid-write) is left out
        and reported in the result; a damaged line elsewhere raises RunDirError naming it."""
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            return MetricsScan([])
        except OSError as err:
            raise RunDirError(f"{self.metrics_path}: cannot read it ({err.strerror or err})") from None
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: b"" when the file ends with one
        by_epoch: dict[float, dict[str, Any]] = {}
        for lineno, raw in enumerate(lines, 1):
            text = raw.decode("utf-8", "replace").strip()
            if text:
                row = _metrics_row(text, f"{self.metrics_path}:{lineno}")
                by_epoch[row["epoch"]] = row
        scan = MetricsScan([])
        if tail.strip():
            try:  # a whole row without its newline is kept; anything else is a cut-short write
                row = _metrics_row(tail.decode("utf-8").strip(), "")
                by_epoch[row["epoch"]] = row
                scan.missing_newline = True
            except (RunDirError, UnicodeDecodeError):
                scan.partial_line, scan.partial_offset = len(lines) + 1, len(data) - len(tail)
        scan.rows = [by_epoch[e] for e in sorted(by_epoch)]
        return scan

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics rows, one per epoch, sorted (see :meth:`scan_metrics`)."""
        return self.scan_metrics().rows

    def repair_metrics(self) -> str | None:
        """Cut a partial last line off metrics.jsonl (end a whole one with its newline); what was done."""
        scan = self.scan_metrics()
        with writing(self.metrics_path):
            if scan.partial_offset is not None:
                os.truncate(self.metrics_path, scan.partial_offset)
                return f"{self.metrics_path}: removed the cut-short line {scan.partial_line}"
            if scan.missing_newline:
                with open(self.metrics_path, "ab") as fh:
                    fh.write(b"\n")
                return f"{self.metrics_path}: ended the last line"
        return None

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row (one ``write``, then fsync); a failed write is cut back off the file."""
        line = (json.dumps(row) + "\n").encode("utf-8")
        with writing(self.metrics_path):
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise
            finally:
                os.close(fd)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with ``rows`` (atomically)."""
        with writing(self.metrics_path):
            write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- checkpoints

    def checkpoint_path(self, which: str | int) -> Path:
        """``"last"``, ``"best"``, or an epoch (``3`` or ``"epoch_3"``) -> ``checkpoints/<name>.pt``."""
        if isinstance(which, int) and not isinstance(which, bool) and which >= 0:
            return self.path / self.CHECKPOINTS / f"epoch_{which}.pt"
        if which in ("last", "best"):
            return self.path / self.CHECKPOINTS / f"{which}.pt"
        match = re.fullmatch(r"epoch_?(\d+)", str(which))
        if match:
            return self.checkpoint_path(int(match.group(1)))
        raise RunDirError(f"unknown checkpoint {which!r}: expected last, best or epoch_K (K = 0, 1, ...)")

    def epoch_checkpoints(self) -> list[int]:
        """The epochs K that have ``checkpoints/epoch_K.pt`` (keep_epoch_checkpoints), sorted."""
        folder = self.path / self.CHECKPOINTS
        found = (re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in folder.glob("epoch_*.pt"))
        return sorted(int(m.group(1)) for m in found if m)

    def save_checkpoint(self, which: str | int, state: dict[str, Any]) -> Path:
        """``torch.save`` ``state`` (plus ``format``) into a checkpoint, atomically."""
        path = self.checkpoint_path(which)
        with writing(path):
            torch_save(path, {**state, "format": FORMAT, "rnnlab_version": __version__})
        return path

    def copy_checkpoint(self, source: str | int, target: str | int) -> None:
        src, dst = self.checkpoint_path(source), self.checkpoint_path(target)
        with writing(dst):
            atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))

    def load_checkpoint(self, which: str | int | Path) -> dict[str, Any]:
        """A checkpoint's dict (tensors on the CPU), checked to be of a format this rnnlab reads."""
        import torch

        path = which if isinstance(which, Path) else self.checkpoint_path(which)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            status = (self.info or {}).get("status") or self._status_on_disk()
            raise RunDirError(f"{path} not found (run status {status!r})") from None
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing error
            raise RunDirError(f"{path}: not a readable rnnlab checkpoint ({type(err).__name__}: {err})") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
            found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
            raise RunDirError(
                f"{path}: checkpoint format {found!r}, this rnnlab ({__version__}) reads format "
                + " and ".join(map(str, READABLE_FORMATS))
            )
        return ckpt

    # -- the commit protocol

    def commit_epoch(
        self,
        checkpoint: dict[str, Any],
        row: dict[str, Any],
        *,
        improved: bool,
        snapshot: dict[str, Any] | None = None,
        **info: Any,
    ) -> None:
        """Write one finished epoch, in the order that keeps the files agreeing (module docstring).

        checkpoint: the full training state (``epoch``, ``history``, ``best`` {``epoch``}, ...) for
        last.pt; row: the epoch's metrics; snapshot: the weights for ``epoch_{k}.pt``, or None;
        info: run.json fields to update (with ``epochs_completed``).
        """
        epoch = int(checkpoint["epoch"])
        if snapshot is not None:
            self.save_checkpoint(epoch, snapshot)
        self.save_checkpoint("last", checkpoint)
        if improved:
            self.copy_checkpoint("last", "best")
        self.append_metrics(row)
        self.update_info(epochs_completed=epoch, **info)

    def restore_files(self, checkpoint: dict[str, Any]) -> list[str]:
        """Bring metrics.jsonl and best.pt back to ``checkpoint`` (last.pt): its history as the metrics
        (a cut-short or uncommitted row goes), and best.pt copied from last.pt when last.pt's epoch is
        the best one but best.pt is not from it (a kill between the two writes). Returns what it did."""
        done = []
        scan = self.scan_metrics()
        if scan.problem:
            done.append(f"{self.metrics_path}: {scan.problem.split(' ', 1)[1]}; rewritten from last.pt")
        self.write_metrics(list(checkpoint["history"]))
        best_epoch = int(checkpoint["best"]["epoch"])
        if best_epoch and best_epoch == int(checkpoint["epoch"]) and self._checkpoint_epoch("best") != best_epoch:
            self.copy_checkpoint("last", "best")
            done.append(f"{self.checkpoint_path('best')}: copied from last.pt (epoch {best_epoch})")
        return done

    def settle(self, status: str, *, error: str | None = None) -> list[str]:
        """After an error or interrupt: metrics.jsonl, best.pt and run.json brought back to last.pt's
        state (:meth:`restore_files`) and run.json's status set to ``status`` (``failed``, with
        ``error``, or ``interrupted``).

        Best effort (the disk may be full): returns a note for each file it could not write.
        """
        notes: list[str] = []
        fields: dict[str, Any] = {"status": status, "error": error}
        last = self.checkpoint_path("last")
        try:
            committed = self.load_checkpoint("last") if last.exists() else None
        except RunDirError as err:
            committed, notes = None, [str(err)]
        if committed is not None:
            fields.update(epochs_completed=int(committed["epoch"]), best_epoch=int(committed["best"]["epoch"]))
        elif not last.exists():  # nothing committed yet
            fields.update(epochs_completed=0, best_epoch=0)
        steps = [lambda: self.update_info(**fields)]
        if committed is not None:
            steps.insert(0, lambda: self.restore_files(committed))
        elif not last.exists():
            steps.insert(0, lambda: self.write_metrics([]))
        for step in steps:
            try:
                step()
            except RunDirError as err:
                notes.append(str(err))
        return notes

    def _checkpoint_epoch(self, which: str) -> int | None:
        """The ``epoch`` of a checkpoint (memory-mapped: cheap), None when missing or unreadable."""
        try:
            import torch

            return torch.load(self.checkpoint_path(which), map_location="cpu", weights_only=True, mmap=True).get(
                "epoch"
            )
        except Exception:  # noqa: BLE001 - missing or unreadable: no epoch
            return None


# ----------------------------------------------------------------------------- comparison folders


class ComparisonDir:
    """A comparison folder (``rnnlab compare``): a manifest, run directories and a lock::

    DIR/compare.json               {"kind": "rnnlab-compare", "format": 1, "experiments": [...],
                                    "invocations": [...]}: marks DIR as a comparison
    DIR/<name>/seed<k>/            a run directory per experiment and seed
    DIR/<name>/seed<k>.worker.log  the output of the worker that trained it (--jobs N)
    DIR/nbsvm_bigram/              the bag-of-words baseline, a one-epoch run directory
    DIR/results.md, results.csv, *.png   the report
    """

    MANIFEST = "compare.json"
    KIND = "rnnlab-compare"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / self.MANIFEST

    def run_dir(self, name: str, k: int) -> RunDir:
        return RunDir(self.path / name / f"seed{k}")

    @staticmethod
    def worker_log(run: RunDir) -> Path:
        """Where a worker's output goes: beside its run directory (a new run directory must be empty)."""
        return run.path.parent / f"{run.path.name}.worker.log"

    def lock(self) -> DirLock:
        return DirLock(self.path, what="comparison folder")

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest; None for a missing or empty folder; ReportError for any other folder."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise ReportError(f"--out {out} is a file; expected a folder for the comparison")
        if not out.exists() or all(p.name == DirLock.NAME for p in out.iterdir()):
            return None
        path = self.manifest_path
        if not path.is_file():
            raise ReportError(
                f"--out {out} is not empty and is not an rnnlab comparison (no {self.MANIFEST}); "
                "refusing to write into it: choose a new or empty folder"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ReportError(f"{path} is not readable JSON ({err}); refusing to write into {out}") from None
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        if kind != self.KIND:
            raise ReportError(
                f"{path} is not an rnnlab comparison manifest (kind {kind!r}, expected "
                f"{self.KIND!r}); refusing to write into {out}"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        with writing(self.manifest_path):
            write_json(self.manifest_path, manifest)

    def experiment_order(self) -> list[str]:
        """The experiment order recorded in the manifest (empty when there is none or it is unreadable)."""
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            names = manifest.get("experiments", []) if isinstance(manifest, dict) else []
            return [str(n) for n in names] if isinstance(names, list) else []
        except (OSError, ValueError):
            return []
