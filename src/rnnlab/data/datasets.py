"""Text datasets in memory (``TextSplit``, ``TextDataset``), seeded splits, and bring-your-own files.

``load_text_dataset`` reads CSV, TSV and JSONL files with a text and a label column, or a folder with
one subfolder of ``.txt`` files per label (aclImdb's layout generalised). A table is scanned once
(every row validated, labels and groups kept, the texts not) and returned as a
:class:`FileTextDataset` whose texts are read from the file only when asked for; ``encode_dataset``
encodes a large one in a streaming pass instead (``rnnlab.data.streaming``).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
import warnings
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.errors import DataError


@dataclass
class TextSplit:
    """One split: ``texts[i]`` has label id ``labels[i]``; ``meta[i]`` may hold ``rating``, ``group``, ``path``."""

    texts: list[str]
    labels: list[int]
    meta: list[dict] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"TextSplit: {len(self.texts)} texts but {len(self.labels)} labels")
        if self.meta is not None and len(self.meta) != len(self.texts):
            raise ValueError(f"TextSplit: {len(self.texts)} texts but {len(self.meta)} meta entries")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int] | np.ndarray) -> TextSplit:
        idx = [int(i) for i in index]
        return TextSplit(
            [self.texts[i] for i in idx],
            [self.labels[i] for i in idx],
            None if self.meta is None else [self.meta[i] for i in idx],
        )

    def label_counts(self, num_classes: int | None = None) -> list[int]:
        n = num_classes if num_classes is not None else (max(self.labels) + 1 if self.labels else 0)
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=n).tolist()


@dataclass
class TextDataset:
    """Train/test (and optional validation) splits with shared label names.

    ``fingerprint`` is a checksum of the source and of every setting that shaped the splits; the
    encoding cache is keyed by it, so two datasets with the same fingerprint must hold the same data.
    """

    train: TextSplit
    test: TextSplit
    label_names: list[str]
    source: str
    fingerprint: str
    val: TextSplit | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def splits(self) -> dict[str, TextSplit]:
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        out["test"] = self.test
        return out


# ----------------------------------------------------------------------------------------------
# Seeded splits


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``: ``round(fraction * n_c)`` of each class ``c`` held out, at random.

    Deterministic for a given seed; both index arrays are sorted (original order kept).
    """
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(fraction * len(idx)))
        held.append(rng.permutation(idx)[:k])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[out] = False
    return np.flatnonzero(mask), out


def group_split(groups: Sequence[Any], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` with whole groups held out until ``fraction`` of the examples are.

    The groups are shuffled with the seed (from their sorted order, so the result does not depend
    on the example order) and taken while the held-out count stays closest to ``fraction * n``.
    No group has examples on both sides.
    """
    keys = [str(g) for g in groups]
    uniq, inverse, counts = np.unique(np.asarray(keys, dtype=object), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    target = fraction * len(keys)
    chosen = np.zeros(len(uniq), bool)
    total = 0
    for g in order:
        if total >= target:
            break
        if abs(total + counts[g] - target) > abs(total - target) and total > 0:
            continue  # this group overshoots; a smaller one further on may fit better
        chosen[g] = True
        total += counts[g]
    held = chosen[inverse]
    return np.flatnonzero(~held), np.flatnonzero(held)


def split_indices(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[Any] | None,
    fraction: float,
    seed: int,
    *,
    by: str,
    what: str,
    source: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` of ``fraction`` carved off: ``by="random"`` (stratified) or ``"group"``."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{what}: fraction must be in (0, 1), got {fraction}")
    if by == "group":
        if groups is None:
            raise DataError(f"{source}: a {what} split by group needs a group for every example")
        keep, held = group_split(groups, fraction, seed)
    elif by == "random":
        keep, held = stratified_split(labels, fraction, seed)
    else:
        raise DataError(f"{what}: split must be 'group' or 'random', got {by!r}")
    if len(held) == 0 or len(keep) == 0:
        raise DataError(f"{source}: {what} fraction {fraction} of {len(labels)} examples leaves an empty split")
    return keep, held


def split_off(
    split: TextSplit, fraction: float, seed: int, *, by: str, what: str, source: str
) -> tuple[TextSplit, TextSplit]:
    """Carve ``fraction`` of ``split`` off: ``by="random"`` (stratified by label) or ``"group"``."""
    groups = None
    if by == "group" and split.meta is not None and all("group" in m for m in split.meta):
        groups = [m["group"] for m in split.meta]
    keep, held = split_indices(split.labels, groups, fraction, seed, by=by, what=what, source=source)
    return split.subset(keep), split.subset(held)


def check_split(split: TextSplit, name: str, source: str, num_classes: int) -> None:
    """Refuse an empty split or a training split with a single class."""
    if len(split) == 0:
        raise DataError(f"{source}: the {name} split is empty; expected at least one example")
    if name == "train":
        present = sum(1 for c in split.label_counts(num_classes) if c > 0)
        if present < 2:
            raise DataError(f"{source}: the train split has {present} class(es); expected at least 2 labels")


# ----------------------------------------------------------------------------------------------
# Bring-your-own files

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class _Raw:
    texts: list[str]
    labels: list[Any]  # raw label values (str or int)
    groups: list[Any] | None
    paths: list[str]
    digest: str


def _decode(data: bytes, where: str, bad: list[str]) -> str:
    """UTF-8 (a leading byte-order mark is dropped); undecodable bytes become U+FFFD and are reported."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        bad.append(where)
        return data.decode("utf-8-sig", errors="replace")


def _warn_bad_utf8(bad: list[str], what: str) -> None:
    if bad:
        warnings.warn(
            f"{len(bad)} {what} held bytes that are not UTF-8 (decoded with U+FFFD replacement); first: {bad[0]}",
            UnicodeWarning,
            stacklevel=3,
        )


def _text_lines(path: Path, fmt: str, sha: Any, bad: list[str]) -> Iterator[str]:
    """The file's lines as text, streamed: as ``io.StringIO(data.decode("utf-8-sig"), newline="")`` splits
    them for CSV/TSV (ends kept; ``\r``, ``\n``, ``\r\n``), or at ``\n`` only for JSONL.

    Bytes that are not UTF-8 become U+FFFD (per line, which equals decoding the whole file: a newline
    byte never belongs to a multi-byte sequence) and the line is appended to ``bad``; ``sha`` (a
    hashlib object) is updated with every byte read.
    """
    with open(path, "rb") as f:
        first = True
        for raw in f:  # split at b"\n"
            sha.update(raw)
            if first:
                first = False
                if raw.startswith(codecs.BOM_UTF8):
                    raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(str(path))
                line = raw.decode("utf-8", errors="replace")
            if fmt == "jsonl" or "\r" not in line:
                yield line
            else:
                yield from _CR_SPLIT.split(line)


_CR_SPLIT = re.compile(r"(?<=\r)(?!\n|$)")


def iter_table(
    path: Path,
    text_column: str,
    label_column: str | None,
    group_column: str | None,
    *,
    sha: Any = None,
    bad: list[str] | None = None,
) -> Iterator[tuple[str, str, Any, Any]]:
    """Validated rows ``(where, text, label, group)`` of a CSV/TSV/JSONL file, one at a time.

    ``where`` is ``"<path>:<line>"``; ``label`` is the raw value (a stripped string or an int;
    None when ``label_column`` is None: texts to classify); ``group`` is the ``group_column``
    value (None without it). Raises :class:`DataError` naming the row for a missing column or
    field, invalid JSON, an empty text, a missing or invalid label, and for a file without rows.
    """
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix!r}; expected .csv, .tsv, .jsonl or a folder "
            "with one subfolder per label"
        )
    sha = sha if sha is not None else hashlib.sha256()
    bad = bad if bad is not None else []
    lines = _text_lines(path, fmt, sha, bad)
    rows: Iterator[tuple[str, dict]]
    if fmt == "jsonl":
        rows = _jsonl_rows(path, lines, text_column, label_column, group_column)
    else:
        reader = csv.DictReader(lines, delimiter="," if fmt == "csv" else "\t")
        header = reader.fieldnames or []
        needed = [c for c in (text_column, label_column, group_column) if c]
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; expected columns {needed}, found {header}{_COLUMN_HINT}")
        rows = ((f"{path}:{reader.line_num}", row) for row in reader)
    n = 0
    for where, row in rows:
        t = row.get(text_column)
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{where}: empty or missing text in column {text_column!r}; expected a non-empty string")
        n += 1
        group = row.get(group_column) if group_column else None
        yield where, t, (_label(row.get(label_column), label_column, where) if label_column else None), group
    if n == 0 and fmt == "jsonl":
        raise DataError(f"{path}: no rows; expected one JSON object per line")
    if n == 0:
        raise DataError(
            f"{path}: no rows; expected a header and at least one row with "
            f"{' and '.join(repr(c) for c in (text_column, label_column) if c)}"
        )


def _label(y: Any, label_column: str, where: str) -> Any:
    """A row's raw label: a stripped string or an integer."""
    if y is None or (isinstance(y, str) and not y.strip()) or isinstance(y, (bool, float, list, dict)):
        raise DataError(
            f"{where}: missing or invalid label in column {label_column!r}: {y!r}; expected a string or an integer"
        )
    return y.strip() if isinstance(y, str) else y


#: Appended to a missing-column error: how to name the columns of your own data.
_COLUMN_HINT = " (name yours with text_column / label_column / group_column, e.g. --text-column review)"


def _jsonl_rows(
    path: Path, lines: Iterator[str], text_column: str, label_column: str | None, group_column: str | None
) -> Iterator[tuple[str, dict]]:
    for lineno, line in enumerate(lines, 1):  # split at "\n" only: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err}); expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for col in (text_column, label_column, group_column):
            if col and col not in row:
                expected = " and ".join(repr(c) for c in (text_column, label_column) if c)
                raise DataError(f"{path}:{lineno}: no {col!r} field; expected fields {expected}, found {sorted(row)}")
        yield f"{path}:{lineno}", row


def iter_texts(path: str | os.PathLike, *, text_column: str = "text") -> Iterator[tuple[int, str]]:
    """Unlabelled texts from a file, one at a time, as ``(line, text)``: ``line`` is the 1-based line
    of the file where the text ends (a quoted CSV field may span lines), as in error messages.

    A ``.csv``, ``.tsv`` or ``.jsonl`` file gives the ``text_column`` of each row (other columns
    are ignored); any other file gives one text a line (LF, CRLF or CR ends a line;
    UTF-8, a byte-order mark dropped). Raises :class:`DataError` for a missing file, a table
    without the column (naming the columns found), an empty line or text, and a file without texts.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "no such file"
        raise DataError(
            f"{path}: {what}; expected a text file (one text a line) or a CSV/TSV/JSONL file with a "
            f"{text_column!r} column"
        )
    if path.suffix.lower() in _FORMATS:
        for where, text, _, _ in iter_table(path, text_column, None, None):
            yield int(where.rsplit(":", 1)[1]), text  # where = "<path>:<line>"
        return
    bad: list[str] = []
    n = 0
    for lineno, line in enumerate(_text_lines(path, "csv", hashlib.sha256(), bad), 1):
        text = line.rstrip("\r\n")
        if not text.strip():
            raise DataError(f"{path}:{lineno}: empty line; expected one text a line (remove the empty lines)")
        n += 1
        yield lineno, text
    _warn_table_utf8(path, bad)
    if n == 0:
        raise DataError(f"{path}: no texts; expected one text a line")


def _warn_table_utf8(path: Path, bad: list[str]) -> None:
    if bad:
        warnings.warn(
            f"{path}: bytes that are not UTF-8 were decoded with U+FFFD replacement", UnicodeWarning, stacklevel=4
        )


def _read_table(path: Path, text_column: str, label_column: str, group_column: str | None) -> _Raw:
    sha = hashlib.sha256()
    bad: list[str] = []
    texts: list[str] = []
    labels: list[Any] = []
    groups: list[Any] | None = [] if group_column else None
    for _, t, y, g in iter_table(path, text_column, label_column, group_column, sha=sha, bad=bad):
        texts.append(t)
        labels.append(y)
        if groups is not None:
            groups.append(g)
    _warn_table_utf8(path, bad)
    return _Raw(texts, labels, groups, [str(path)] * len(texts), sha.hexdigest())


def _read_folder(path: Path) -> _Raw:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{path}: expected one subfolder of .txt files per label, found no subfolder")
    texts: list[str] = []
    labels: list[Any] = []
    paths: list[str] = []
    h = hashlib.sha256()
    bad: list[str] = []
    for sub in subdirs:
        files = sorted(sub.glob("*.txt"))
        for f in files:
            data = f.read_bytes()
            h.update(f"{sub.name}/{f.name}\0{len(data)}\0".encode())
            h.update(data)
            t = _decode(data, str(f), bad)
            if not t.strip():
                raise DataError(f"{f}: empty text; expected a non-empty review")
            texts.append(t)
            labels.append(sub.name)
            paths.append(str(f))
    if not texts:
        raise DataError(f"{path}: no .txt files in the label subfolders {[s.name for s in subdirs]}")
    _warn_bad_utf8(bad, "files")
    return _Raw(texts, labels, None, paths, h.hexdigest())


def _read_any(path: str | os.PathLike, text_column: str, label_column: str, group_column: str | None) -> _Raw:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"{p}: no such file or folder; expected a .csv, .tsv or .jsonl file or a folder "
            "with one subfolder per label"
        )
    if p.is_dir():
        if group_column:
            raise DataError(f"{p}: group_column needs a table (CSV/TSV/JSONL); a folder has no columns")
        return _read_folder(p)
    return _read_table(p, text_column, label_column, group_column)


_INT = re.compile(r"[+-]?\d+")


def _label_mapping(values: Sequence[Any]) -> tuple[list[str], Callable[[Any], str]]:
    """Label names (sorted; numerically when every label is an integer or integer string) and value -> name."""
    canon = {str(v) if isinstance(v, int) else v.strip() for v in values}
    if canon and all(_INT.fullmatch(c) for c in canon):
        ints = sorted({int(c) for c in canon})
        return [str(i) for i in ints], lambda v: str(int(v))
    return sorted(canon), lambda v: str(v) if isinstance(v, int) else v.strip()


def _to_split(raw: _Raw, name_to_id: dict[str, int], to_name: Callable[[Any], str]) -> TextSplit:
    labels = [name_to_id[to_name(v)] for v in raw.labels]
    if raw.groups is None:
        meta = [{"path": p} for p in raw.paths]
    else:
        meta = [{"path": p, "group": g} for p, g in zip(raw.paths, raw.groups)]
    return TextSplit(raw.texts, labels, meta)


#: ``encode_dataset`` encodes a :class:`FileTextDataset` in a streaming pass (memory bounded by the
#: vocabulary counts and a chunk of rows, ids written to memory-mapped files) when its files hold at
#: least this many bytes, else in memory (faster on 2+ cores for files that fit easily).
STREAM_MIN_BYTES = 64 << 20

#: The code of each split in a :class:`FileTextDataset`'s per-row ``side`` array.
SIDES = {"train": 0, "val": 1, "test": 2}


@dataclass
class _Table:
    """One scanned CSV/TSV/JSONL file: its digest, row count, and per-row label and group codes."""

    path: Path
    digest: str
    size: int
    label_values: list[Any]  # distinct raw labels, in order of first appearance
    label_codes: np.ndarray  # (R,) int32 index into label_values
    group_keys: list[str] | None  # distinct str(group)
    group_codes: np.ndarray | None  # (R,) int32 index into group_keys

    @property
    def rows(self) -> int:
        return len(self.label_codes)


def _scan_table(path: Path, text_column: str, label_column: str, group_column: str | None) -> _Table:
    """Validate every row of a table (same errors as reading it) and keep labels and groups, not texts."""
    sha = hashlib.sha256()
    bad: list[str] = []
    values: dict[Any, int] = {}
    groups: dict[str, int] = {}
    codes, gcodes = array("i"), array("i")
    for _, _, y, g in iter_table(path, text_column, label_column, group_column, sha=sha, bad=bad):
        codes.append(values.setdefault(y, len(values)))
        if group_column:
            gcodes.append(groups.setdefault(str(g), len(groups)))
    _warn_table_utf8(path, bad)
    return _Table(
        path,
        sha.hexdigest(),
        path.stat().st_size,
        list(values),
        np.frombuffer(codes, np.int32).copy(),
        list(groups) if group_column else None,
        np.frombuffer(gcodes, np.int32).copy() if group_column else None,
    )


class FileTextSplit(TextSplit):
    """A split of a :class:`FileTextDataset`: labels in memory, texts and meta read from the file on first use.

    ``rows``: ``(N,)`` int64 indices of the split's rows among all rows of the dataset's files (train
    file first), increasing; ``label_array``: ``(N,)`` int64 label ids.
    """

    def __init__(self, owner: FileTextDataset, name: str, rows: np.ndarray, label_array: np.ndarray) -> None:
        self._owner, self.name = owner, name
        self.rows, self.label_array = rows, label_array

    texts = property(lambda self: self._owner._read()[self.name][0])  # type: ignore[assignment]
    meta = property(lambda self: self._owner._read()[self.name][1])  # type: ignore[assignment]
    labels = property(lambda self: self.label_array.tolist())  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.rows)

    def label_counts(self, num_classes: int | None = None) -> list[int]:
        n = num_classes if num_classes is not None else int(self.label_array.max(initial=-1)) + 1
        return np.bincount(self.label_array, minlength=n).tolist()

    def __repr__(self) -> str:
        return f"FileTextSplit({self.name}, N={len(self)}, source={self._owner.source!r})"


@dataclass(repr=False, eq=False)
class FileTextDataset(TextDataset):
    """A :class:`TextDataset` over CSV/TSV/JSONL files, scanned but not held in memory.

    ``side``: ``(R,)`` int8 over all rows of ``tables`` (0 train, 1 val, 2 test). Reading ``texts``
    or ``meta`` of any split reads the files once (all splits) and keeps them; :func:`encode_dataset`
    instead streams the rows (:meth:`iter_texts`) when :meth:`streams` is true.
    """

    tables: list[_Table] = field(default_factory=list)
    side: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    columns: tuple[str, str, str | None] = ("text", "label", None)
    stream: bool | None = None
    _cache: dict[str, tuple[list[str], list[dict]]] | None = None

    def streams(self) -> bool:
        """Encode in a streaming pass: ``stream`` if set, else when the files hold >= ``STREAM_MIN_BYTES``."""
        return self.stream if self.stream is not None else sum(t.size for t in self.tables) >= STREAM_MIN_BYTES

    def iter_rows(self) -> Iterator[tuple[str, str, Any]]:
        """``(where, text, group)`` for every row of every file, in order; refuses a file changed since the scan."""
        text_column, label_column, group_column = self.columns
        for table in self.tables:
            sha = hashlib.sha256()
            n = 0
            for where, t, _, g in iter_table(table.path, text_column, label_column, group_column, sha=sha, bad=[]):
                n += 1
                if n > table.rows:
                    break
                yield where, t, g
            if n != table.rows or sha.hexdigest() != table.digest:
                raise DataError(
                    f"{table.path}: the file changed since it was loaded ({table.rows} rows, sha256 "
                    f"{table.digest[:12]}...); load it again"
                )

    def iter_texts(self) -> Iterator[str]:
        for _, t, _ in self.iter_rows():
            yield t

    def _read(self) -> dict[str, tuple[list[str], list[dict]]]:
        if self._cache is None:
            out: dict[str, tuple[list[str], list[dict]]] = {k: ([], []) for k in SIDES}
            names = list(SIDES)
            grouped = self.columns[2] is not None
            for (where, t, g), s in zip(self.iter_rows(), self.side.tolist()):
                texts, meta = out[names[s]]
                texts.append(t)
                path = where.rsplit(":", 1)[0]
                meta.append({"path": path, "group": g} if grouped else {"path": path})
            self._cache = out
        return self._cache

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits().items())
        return f"FileTextDataset({self.source!r}, {sizes}, label_names={self.label_names})"


def _load_tables(
    train: Path,
    test: Path | None,
    text_column: str,
    label_column: str,
    group_column: str | None,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    stream: bool | None,
) -> FileTextDataset:
    tables = [_scan_table(train, text_column, label_column, group_column)]
    if test is not None:
        tables.append(_scan_table(test, text_column, label_column, group_column))
    names, to_name = _label_mapping([v for t in tables for v in t.label_values])
    name_to_id = {n: i for i, n in enumerate(names)}
    labels = np.concatenate(
        [np.array([name_to_id[to_name(v)] for v in t.label_values], np.int64)[t.label_codes] for t in tables]
    )
    groups = None
    if group_column:
        groups = np.array([k for t in tables for k in t.group_keys or []], dtype=object)[
            np.concatenate(
                [
                    c + off
                    for c, off in zip(
                        [t.group_codes for t in tables], np.cumsum([0] + [len(t.group_keys or []) for t in tables])
                    )
                ]
            )
        ]
    by = "group" if group_column else "random"
    n0 = tables[0].rows
    side = np.zeros(len(labels), np.int8)
    if test is None:
        keep, held = split_indices(labels, groups, test_fraction, seed, by=by, what="test", source=str(train))
        side[held] = SIDES["test"]
        train_rows = keep
    else:
        side[n0:] = SIDES["test"]
        train_rows = np.arange(n0)
    if val_fraction > 0:
        _, held = split_indices(
            labels[train_rows],
            None if groups is None else groups[train_rows],
            val_fraction,
            seed + 1,
            by=by,
            what="validation",
            source=str(train),
        )
        side[train_rows[held]] = SIDES["val"]
    source = str(train) if test is None else f"{train} + {test}"
    key = {
        "kind": "text",
        "train": tables[0].digest,
        "test": tables[1].digest if test is not None else None,
        "text_column": text_column,
        "label_column": label_column,
        "group_column": group_column,
        "test_fraction": None if test is not None else test_fraction,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    ds = FileTextDataset(
        None,
        None,
        names,
        source,
        fp,
        None,
        {},
        tables,
        side,  # type: ignore[arg-type]
        (text_column, label_column, group_column),
        stream,
    )
    splits = {}
    for name, code in SIDES.items():
        rows = np.flatnonzero(side == code)
        if name != "val" or val_fraction > 0:
            splits[name] = FileTextSplit(ds, name, rows, labels[rows])
    ds.train, ds.test, ds.val = splits["train"], splits["test"], splits.get("val")
    check_split(ds.train, "train", source, len(names))
    check_split(ds.test, "test", source, len(names))
    return ds


def load_text_dataset(
    train: str | os.PathLike,
    test: str | os.PathLike | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    group_column: str | None = None,
    seed: int = 0,
    stream: bool | None = None,
) -> TextDataset:
    """Load your own labelled texts.

    ``train`` (and ``test``) is a CSV/TSV/JSONL file with columns ``text_column`` and
    ``label_column``, or a folder with one subfolder of ``.txt`` files per label (the subfolder
    name is the label). Without ``test``, a stratified ``test_fraction`` of ``train`` becomes the
    test split (grouped by ``group_column`` when given); ``val_fraction > 0`` carves a validation
    split from train the same way. Labels may be strings or integers: ``label_names`` are sorted
    (numerically when all labels are integers) and label ids index them. All splits are
    deterministic for a given ``seed``.

    Tables (CSV/TSV/JSONL) give a :class:`FileTextDataset`: every row is validated now, the texts
    are read when first used. ``stream`` decides how :func:`encode_dataset` encodes it: True, in a
    streaming pass into memory-mapped files (memory: the vocabulary counts and a chunk of rows);
    False, in memory; None, streaming for files of ``STREAM_MIN_BYTES`` (64 MiB) or more. The
    result is the same either way.
    """
    paths = [Path(p).expanduser() for p in ([train] if test is None else [train, test])]
    if all(p.is_file() and p.suffix.lower() in _FORMATS for p in paths):
        return _load_tables(
            paths[0],
            paths[1] if test is not None else None,
            text_column,
            label_column,
            group_column,
            test_fraction,
            val_fraction,
            seed,
            stream,
        )
    raw_train = _read_any(train, text_column, label_column, group_column)
    raw_test = _read_any(test, text_column, label_column, group_column) if test is not None else None
    all_labels = raw_train.labels + (raw_test.labels if raw_test else [])
    names, to_name = _label_mapping(all_labels)
    name_to_id = {n: i for i, n in enumerate(names)}
    source = str(train) if test is None else f"{train} + {test}"
    by = "group" if group_column else "random"
    tr = _to_split(raw_train, name_to_id, to_name)
    if raw_test is None:
        tr, te = split_off(tr, test_fraction, seed, by=by, what="test", source=str(train))
    else:
        te = _to_split(raw_test, name_to_id, to_name)
    val = None
    if val_fraction > 0:
        tr, val = split_off(tr, val_fraction, seed + 1, by=by, what="validation", source=str(train))
    check_split(tr, "train", source, len(names))
    check_split(te, "test", source, len(names))
    key = {
        "kind": "text",
        "train": raw_train.digest,
        "test": raw_test.digest if raw_test else None,
        "text_column": text_column,
        "label_column": label_column,
        "group_column": group_column,
        "test_fraction": None if raw_test else test_fraction,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return TextDataset(tr, te, names, source, fp, val)
