"""Text datasets in memory (``TextSplit``, ``TextDataset``), seeded splits, and bring-your-own files.

``load_text_dataset`` reads CSV, TSV and JSONL files with a text and a label column, or a folder with
one subfolder of ``.txt`` files per label (aclImdb's layout generalised).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rnnlab.data._cache import DataError


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

    def subset(self, index: Sequence[int] | np.ndarray) -> "TextSplit":
        idx = [int(i) for i in index]
        return TextSplit([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                         None if self.meta is None else [self.meta[i] for i in idx])

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


def split_off(split: TextSplit, fraction: float, seed: int, *, by: str, what: str,
              source: str) -> tuple[TextSplit, TextSplit]:
    """Carve ``fraction`` of ``split`` off: ``by="random"`` (stratified by label) or ``"group"``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{what}: fraction must be in (0, 1), got {fraction}")
    if by == "group":
        if split.meta is None or any("group" not in m for m in split.meta):
            raise DataError(f"{source}: a {what} split by group needs a group for every example")
        keep, held = group_split([m["group"] for m in split.meta], fraction, seed)
    elif by == "random":
        keep, held = stratified_split(split.labels, fraction, seed)
    else:
        raise ValueError(f"{what}: split must be 'group' or 'random', got {by!r}")
    if len(held) == 0 or len(keep) == 0:
        raise DataError(f"{source}: {what} fraction {fraction} of {len(split)} examples leaves an empty split")
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
        warnings.warn(f"{len(bad)} {what} held bytes that are not UTF-8 (decoded with U+FFFD replacement); "
                      f"first: {bad[0]}", UnicodeWarning, stacklevel=3)


def _read_table(path: Path, text_column: str, label_column: str, group_column: str | None) -> _Raw:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected .csv, .tsv, .jsonl or a folder "
                        "with one subfolder per label")
    data = path.read_bytes()
    bad: list[str] = []
    text = _decode(data, str(path), bad)
    if bad:
        warnings.warn(f"{path}: bytes that are not UTF-8 were decoded with U+FFFD replacement",
                      UnicodeWarning, stacklevel=3)
    texts: list[str] = []
    labels: list[Any] = []
    groups: list[Any] | None = [] if group_column else None
    rows: list[tuple[str, dict]] = []  # (where, row)
    if fmt == "jsonl":
        for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err}); expected one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for col in (text_column, label_column, *([group_column] if group_column else [])):
                if col not in row:
                    raise DataError(f"{path}:{lineno}: no {col!r} field; expected fields {text_column!r} and "
                                    f"{label_column!r}, found {sorted(row)}")
            rows.append((f"{path}:{lineno}", row))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
        header = reader.fieldnames or []
        needed = [text_column, label_column] + ([group_column] if group_column else [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; expected columns {needed}, found {header}")
        for row in reader:
            rows.append((f"{path}:{reader.line_num}", row))
    if not rows:
        raise DataError(f"{path}: no rows; expected a header and at least one row with {text_column!r} and "
                        f"{label_column!r}" if fmt != "jsonl" else f"{path}: no rows; expected one JSON object per line")
    for where, row in rows:
        t, y = row.get(text_column), row.get(label_column)
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{where}: empty or missing text in column {text_column!r}; expected a non-empty string")
        if y is None or (isinstance(y, str) and not y.strip()) or isinstance(y, (bool, float, list, dict)):
            raise DataError(f"{where}: missing or invalid label in column {label_column!r}: {y!r}; "
                            "expected a string or an integer")
        texts.append(t)
        labels.append(y.strip() if isinstance(y, str) else y)
        if groups is not None:
            groups.append(row.get(group_column))
    return _Raw(texts, labels, groups, [str(path)] * len(texts), hashlib.sha256(data).hexdigest())


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
        raise DataError(f"{p}: no such file or folder; expected a .csv, .tsv or .jsonl file or a folder "
                        "with one subfolder per label")
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


def load_text_dataset(train: str | os.PathLike, test: str | os.PathLike | None = None, *,
                      text_column: str = "text", label_column: str = "label", test_fraction: float = 0.2,
                      val_fraction: float = 0.0, group_column: str | None = None,
                      seed: int = 0) -> TextDataset:
    """Load your own labelled texts.

    ``train`` (and ``test``) is a CSV/TSV/JSONL file with columns ``text_column`` and
    ``label_column``, or a folder with one subfolder of ``.txt`` files per label (the subfolder
    name is the label). Without ``test``, a stratified ``test_fraction`` of ``train`` becomes the
    test split (grouped by ``group_column`` when given); ``val_fraction > 0`` carves a validation
    split from train the same way. Labels may be strings or integers: ``label_names`` are sorted
    (numerically when all labels are integers) and label ids index them. All splits are
    deterministic for a given ``seed``.
    """
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
    key = {"kind": "text", "train": raw_train.digest, "test": raw_test.digest if raw_test else None,
           "text_column": text_column, "label_column": label_column, "group_column": group_column,
           "test_fraction": None if raw_test else test_fraction, "val_fraction": val_fraction, "seed": seed}
    fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return TextDataset(tr, te, names, source, fp, val)
