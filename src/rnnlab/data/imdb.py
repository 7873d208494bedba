"""IMDB (aclImdb v1): read the official or labeled-only archive without unpacking, or an extracted
folder, or download the official archive; keep each review's star rating and movie as metadata.

Parsed archives are cached (``<cache>/imdb-texts/<key>/``), keyed by the archive's SHA-256 (memoised
per file stat, see :func:`rnnlab.data._cache.file_sha256`) and the parser version, so the second
load reads one blob of texts instead of decompressing and walking the tar again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rnnlab.data._cache import file_sha256, key_digest, read_entry, resolve_cache_dir, write_entry
from rnnlab.data.datasets import TextDataset, TextSplit, check_split, split_off
from rnnlab.errors import DataError

#: The official archive (Maas et al., 2011) and its SHA-256.
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_FILENAME = "aclImdb_v1.tar.gz"
#: Bump when what the parser extracts changes (invalidates the parsed-text cache).
PARSER_VERSION = 1

LABEL_NAMES = ["neg", "pos"]
SPLITS = ("train", "test")
_REVIEW = re.compile(r"(\d+)_(\d+)\.txt")


# ----------------------------------------------------------------------------------------------
# Streaming tar reader: it walks the 28 MB labeled archive (50,010 members) in about 0.8 s of CPU,
# mostly gzip, where ``tarfile`` (a TarInfo and a file object per member) takes about 2.4 s. It
# understands ustar, GNU long names and pax path/size records: what aclImdb archives (and the
# tar files of common tools) use.


class _Stream:
    """Read-exact over a (gzip-compressed or plain) file, decompressing in 1 MiB steps."""

    def __init__(self, f: BinaryIO, gz: bool, path: Path) -> None:
        self.f, self.gz, self.path = f, gz, path
        self.d = zlib.decompressobj(31) if gz else None
        self.buf = b""
        self.pos = 0
        self.consumed = 0  # bytes returned by read() so far

    def _more(self) -> bytes:
        try:
            return self._decompress()
        except zlib.error as err:
            raise DataError(f"{self.path}: corrupt gzip data ({err})") from None

    def _decompress(self) -> bytes:
        while True:
            raw = self.f.read(1 << 20)
            if not self.gz:
                return raw
            assert self.d is not None
            if not raw:
                out = self.d.flush()
                if not out and not self.d.eof:
                    raise DataError(f"{self.path}: archive is truncated (compressed data ends early)")
                return out
            out = self.d.decompress(raw)
            if self.d.eof and self.d.unused_data:  # concatenated gzip members
                rest = self.d.unused_data
                self.d = zlib.decompressobj(31)
                out += self.d.decompress(rest)
            if out:
                return out

    def read(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            more = self._more()
            if not more:
                break
            self.buf = self.buf[self.pos :] + more
            self.pos = 0
        out = self.buf[self.pos : self.pos + n]
        self.pos += len(out)
        self.consumed += len(out)
        return out


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    s = field.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def iter_tar(path: Path) -> Iterator[tuple[str, _Stream, int]]:
    """Yield ``(name, stream, size)`` per regular file; the caller may read up to ``size`` bytes.

    Raises :class:`DataError` naming the archive when it is not a (gzip-compressed) tar file.
    """
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        s = _Stream(f, gz, path)
        long_name: str | None = None
        pax: dict[str, str] = {}
        first = True
        while True:
            hdr = s.read(512)
            if len(hdr) < 512:
                if first:
                    raise DataError(f"{path}: not a tar or tar.gz archive (too short)")
                raise DataError(f"{path}: archive is truncated (ends inside a header)")
            if hdr.count(0) == 512:
                return
            stored = hdr[148:156]
            try:
                ok = _octal(stored) == sum(hdr) - sum(stored) + 256
            except ValueError:
                ok = False
            if not ok:
                raise DataError(
                    f"{path}: not a tar or tar.gz archive (bad header checksum"
                    f"{'' if first else ' after the first member'})"
                )
            first = False
            kind = hdr[156:157]
            size = _octal(hdr[124:136])
            name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if hdr[257:262] == b"ustar" and hdr[345] != 0:
                name = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
            if long_name is not None:
                name, long_name = long_name, None
            if "path" in pax:
                name = pax["path"]
            if "size" in pax:
                size = int(pax["size"])
            pax = {}
            padded = (size + 511) & ~511
            if kind in (b"L", b"x", b"g"):
                data = s.read(padded)[:size]
                if kind == b"L":
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
                elif kind == b"x":
                    pax = _parse_pax(data)
                continue
            if kind in (b"0", b"\0", b"7"):
                start = s.consumed
                yield name, s, size
                consumed = s.consumed - start
                rest = padded - consumed
            else:
                rest = padded
            while rest > 0:  # skip the remaining data (and padding) in bounded steps
                got = len(s.read(min(rest, 1 << 22)))
                if got == 0:
                    raise DataError(f"{path}: archive is truncated (ends inside {name})")
                rest -= got


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        n = int(data[pos:sp])
        rec = data[sp + 1 : pos + n - 1].decode("utf-8", "replace")
        k, _, v = rec.partition("=")
        out[k] = v
        pos += n
    return out


# ----------------------------------------------------------------------------------------------
# Collecting reviews


class _Collector:
    """Gathers reviews and movie URLs by (split, label) from archive members or files."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.reviews: dict[tuple[str, int], list[tuple[int, int, bytes]]] = {(s, y): [] for s in SPLITS for y in (0, 1)}
        self.urls: dict[tuple[str, int], list[str]] = {}

    @staticmethod
    def classify(name: str) -> tuple[str, str, int, re.Match | None] | None:
        """``(kind, split, label, match)`` for a review or urls file of train/test pos/neg, else None."""
        parts = name.replace("\\", "/").rstrip("/").split("/")
        if len(parts) >= 3 and parts[-3] in SPLITS and parts[-2] in ("pos", "neg"):
            m = _REVIEW.fullmatch(parts[-1])
            if m:
                return "review", parts[-3], LABEL_NAMES.index(parts[-2]), m
        if len(parts) >= 2 and parts[-2] in SPLITS and parts[-1] in ("urls_pos.txt", "urls_neg.txt"):
            return "urls", parts[-2], LABEL_NAMES.index(parts[-1][5:8]), None
        return None

    def add(self, name: str, cls: tuple, data: bytes) -> None:
        kind, split, label, m = cls
        if kind == "review":
            self.reviews[(split, label)].append((int(m.group(1)), int(m.group(2)), data))
        else:
            self.urls[(split, label)] = data.decode("utf-8", "replace").splitlines()

    def finish(self) -> dict[str, dict[str, object]]:
        """Per split: text blob, offsets, labels, ids, ratings and group indices (sorted by label, id)."""
        missing = [f"{s}/{LABEL_NAMES[y]}" for (s, y), v in self.reviews.items() if not v]
        if missing:
            raise DataError(
                f"{self.source}: not an aclImdb dataset: no reviews in {', '.join(missing)}; expected files "
                "aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt"
            )
        groups: list[str] = []
        group_index: dict[str, int] = {}
        out: dict[str, dict[str, object]] = {}
        bad_utf8: list[str] = []
        for split in SPLITS:
            parts: list[bytes] = []
            labels, ids, ratings, gidx = [], [], [], []
            for label in (0, 1):
                items = sorted(self.reviews[(split, label)], key=lambda t: t[0])
                urls = self.urls.get((split, label))
                for rid, rating, data in items:
                    try:
                        data.decode("utf-8")
                    except UnicodeDecodeError:
                        bad_utf8.append(f"{split}/{LABEL_NAMES[label]}/{rid}_{rating}.txt")
                        data = data.decode("utf-8", "replace").encode("utf-8")
                    parts.append(data)
                    labels.append(label)
                    ids.append(rid)
                    ratings.append(rating)
                    if urls is None:
                        gidx.append(-1)
                        continue
                    if rid >= len(urls):
                        raise DataError(
                            f"{self.source}: {split}/urls_{LABEL_NAMES[label]}.txt has {len(urls)} lines; "
                            f"expected a line for review {split}/{LABEL_NAMES[label]}/{rid}_{rating}.txt"
                        )
                    url = urls[rid].strip()
                    movie = url.rsplit("/usercomments", 1)[0]
                    if movie not in group_index:
                        group_index[movie] = len(groups)
                        groups.append(movie)
                    gidx.append(group_index[movie])
            lengths = np.fromiter(map(len, parts), np.int64, len(parts))
            offsets = np.zeros(len(parts) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            out[split] = {
                "blob": b"".join(parts),
                "offsets": offsets,
                "labels": np.asarray(labels, np.int8),
                "ids": np.asarray(ids, np.int32),
                "ratings": np.asarray(ratings, np.int8),
                "groups": np.asarray(gidx, np.int32),
            }
        out["_groups"] = {"groups": groups, "bad_utf8": bad_utf8}  # type: ignore[assignment]
        return out


def _read_archive(path: Path) -> dict[str, dict[str, object]]:
    col = _Collector(path)
    for name, stream, size in iter_tar(path):
        cls = col.classify(name)
        if cls is None:
            continue  # README, imdb.vocab, *.feat, train/unsup/*, urls_unsup.txt
        data = stream.read(size)
        if len(data) < size:
            raise DataError(f"{path}: archive is truncated (ends inside {name})")
        col.add(name, cls, data)
    return col.finish()


def _read_folder(path: Path) -> tuple[dict[str, dict[str, object]], str]:
    """Read an extracted aclImdb folder; returns the parsed splits and a SHA-256 of the files read."""
    col = _Collector(path)
    h = hashlib.sha256()
    for split in SPLITS:
        for sub in ("pos", "neg"):
            d = path / split / sub
            if not d.is_dir():
                raise DataError(
                    f"{path}: not an aclImdb folder: {split}/{sub}/ is missing; expected "
                    "train/ and test/ with pos/ and neg/ subfolders"
                )
            for entry in sorted(os.scandir(d), key=lambda e: e.name):
                name = f"{split}/{sub}/{entry.name}"
                cls = col.classify(name)
                if cls is None or not entry.is_file():
                    continue
                with open(entry.path, "rb") as f:
                    data = f.read()
                h.update(f"{name}\0{len(data)}\0".encode())
                h.update(data)
                col.add(name, cls, data)
        for sub in ("pos", "neg"):
            u = path / split / f"urls_{sub}.txt"
            if u.is_file():
                data = u.read_bytes()
                h.update(f"{split}/urls_{sub}.txt\0{len(data)}\0".encode())
                h.update(data)
                col.add(u.name, ("urls", split, LABEL_NAMES.index(sub), None), data)
    return col.finish(), h.hexdigest()


def _to_splits(parsed: dict[str, dict[str, object]]) -> dict[str, TextSplit]:
    groups: list[str] = parsed["_groups"]["groups"]  # type: ignore[index]
    out = {}
    for split in SPLITS:
        p = parsed[split]
        blob: bytes = p["blob"]  # type: ignore[assignment]
        offs = p["offsets"].tolist()  # type: ignore[union-attr]
        texts = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1], offs[1:])]
        labels = p["labels"].tolist()  # type: ignore[union-attr]
        meta = []
        for y, rid, r, g in zip(labels, p["ids"].tolist(), p["ratings"].tolist(), p["groups"].tolist()):  # type: ignore[union-attr]
            m = {"rating": r, "path": f"{split}/{LABEL_NAMES[y]}/{rid}_{r}.txt"}
            if g >= 0:
                m["group"] = groups[g]
            meta.append(m)
        out[split] = TextSplit(texts, labels, meta)
    return out


def _text_cache(cache: Path, sha: str) -> tuple[Path, dict]:
    key = {"kind": "imdb-texts", "parser": PARSER_VERSION, "sha256": sha}
    return cache / "imdb-texts" / key_digest(key), key


def _load_parsed_archive(path: Path, cache: Path, use_cache: bool) -> tuple[dict[str, dict[str, object]], str]:
    sha = file_sha256(path, cache if use_cache else None)
    entry, key = _text_cache(cache, sha)
    if use_cache:
        hit = read_entry(entry, key)
        if hit is not None:
            arrays, blobs, info = hit
            parsed: dict[str, dict[str, object]] = {
                s: {
                    "blob": blobs[f"{s}.bin"],
                    **{k: arrays[f"{s}_{k}"] for k in ("offsets", "labels", "ids", "ratings", "groups")},
                }
                for s in SPLITS
            }
            parsed["_groups"] = {"groups": info["groups"], "bad_utf8": info.get("bad_utf8", [])}
            return parsed, sha
    parsed = _read_archive(path)
    if use_cache:
        arrays = {f"{s}_{k}": parsed[s][k] for s in SPLITS for k in ("offsets", "labels", "ids", "ratings", "groups")}
        blobs = {f"{s}.bin": parsed[s]["blob"] for s in SPLITS}
        try:
            write_entry(entry, key, arrays, blobs, dict(parsed["_groups"]))  # type: ignore[arg-type]
        except OSError:
            pass  # an unwritable cache only costs speed
    return parsed, sha


# ----------------------------------------------------------------------------------------------
# Download


def download_imdb(
    cache_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the official archive into ``cache_dir`` (default ``$RNNLAB_CACHE`` or ``~/.cache/rnnlab``).

    The bytes go to a temporary ``*.part`` file in the same folder while their SHA-256 is computed;
    only a complete transfer with the expected checksum is renamed (``os.replace``) to
    ``aclImdb_v1.tar.gz``. An interrupted or corrupt transfer raises :class:`DataError` and leaves
    nothing behind. An existing archive is checked and reused. ``url`` and ``sha256`` default to
    :data:`IMDB_URL` and :data:`IMDB_SHA256`.
    """
    url = url or IMDB_URL
    expected = (sha256 or IMDB_SHA256).lower()
    cache = resolve_cache_dir(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / IMDB_FILENAME
    if dest.exists():
        if file_sha256(dest, cache) == expected:
            return dest
        dest.unlink()  # not what we verified when writing it: fetch it again
    fd, part = tempfile.mkstemp(dir=cache, prefix=f"{IMDB_FILENAME}.", suffix=".part")
    h = hashlib.sha256()
    got = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                raise DataError(
                    f"download of {url} failed: {err}; download it yourself and pass its path (or set $RNNLAB_DATA)"
                ) from None
            with resp:
                total = resp.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                bar = _progress_bar(total, progress, f"downloading {IMDB_FILENAME}")
                try:
                    while True:
                        try:
                            chunk = resp.read(1 << 16)
                        except (OSError, http.client.HTTPException) as err:
                            raise DataError(
                                f"download of {url} interrupted after {got} bytes"
                                f"{f' of {total}' if total else ''}: {err!r}"
                            ) from None
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        got += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
        if total is not None and got != total:
            raise DataError(f"download of {url} interrupted: received {got} of {total} bytes")
        digest = h.hexdigest()
        if digest != expected:
            raise DataError(
                f"download of {url} is corrupt: sha256 {digest}, expected {expected} ({got} bytes received)"
            )
        os.replace(part, dest)
    except BaseException:
        try:
            os.unlink(part)
        except OSError:
            pass
        raise
    file_sha256(dest, cache)  # memoise the fingerprint of the verified file
    return dest


def _progress_bar(total: int | None, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


# ----------------------------------------------------------------------------------------------
# The public loader


def _resolve_path(path: str | os.PathLike | None, cache: Path, progress: bool) -> Path:
    if path is None or str(path) == "":
        env = os.environ.get("RNNLAB_DATA", "")
        if env:
            path = env
        else:
            return download_imdb(cache, progress=progress)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"{p}: no such file or folder; expected aclImdb_v1.tar.gz, the labeled-only archive "
            "or an extracted aclImdb/ folder"
        )
    if p.is_dir() and not (p / "train").is_dir() and (p / "aclImdb" / "train").is_dir():
        p = p / "aclImdb"
    return p


def load_imdb(
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    val_split: str = "group",
    seed: int = 0,
    progress: bool = True,
    use_cache: bool = True,
) -> TextDataset:
    """Load IMDB: 25,000 train and 25,000 test reviews, labels 0 = neg, 1 = pos.

    ``path``: the official ``aclImdb_v1.tar.gz`` (``train/unsup`` skipped), the labeled-only
    archive, an extracted ``aclImdb/`` folder, or None (``$RNNLAB_DATA``, else download into the
    cache folder). Archives are read as a stream, never unpacked to disk. Each example's ``meta``
    holds ``rating`` (the stars in ``<id>_<rating>.txt``), ``path`` and ``group``: the movie
    (its IMDB title URL, from ``urls_{pos,neg}.txt``). Examples are ordered by (label, id).

    ``val_fraction > 0`` carves a validation split from train: by movie (``val_split="group"``,
    the default: no movie on both sides, as train and test are made) or at random, stratified by
    label (``"random"``, which overstates test accuracy on IMDB). Deterministic for a given seed.
    """
    t0 = time.perf_counter()
    cache = resolve_cache_dir(cache_dir)
    p = _resolve_path(path, cache, progress)
    if p.is_dir():
        parsed, sha = _read_folder(p)
    else:
        parsed, sha = _load_parsed_archive(p, cache, use_cache)
    bad = parsed["_groups"].get("bad_utf8", [])  # type: ignore[union-attr]
    if bad:
        import warnings

        warnings.warn(
            f"{p}: {len(bad)} review files held bytes that are not UTF-8 (decoded with U+FFFD "
            f"replacement); first: {bad[0]}",
            UnicodeWarning,
            stacklevel=2,
        )
    splits = _to_splits(parsed)
    train, test = splits["train"], splits["test"]
    val = None
    if val_fraction:
        if val_split == "group" and any("group" not in m for m in train.meta or []):
            raise DataError(
                f"{p}: a validation split by movie needs train/urls_pos.txt and train/urls_neg.txt; "
                "use val_split='random'"
            )
        train, val = split_off(train, val_fraction, seed, by=val_split, what="validation", source=str(p))
    check_split(train, "train", str(p), 2)
    check_split(test, "test", str(p), 2)
    key = {
        "kind": "imdb",
        "sha256": sha,
        "parser": PARSER_VERSION,
        "val": [val_fraction, val_split, seed] if val_fraction else None,
    }
    fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    info = {"load_seconds": time.perf_counter() - t0, "path": str(p)}
    return TextDataset(train, test, list(LABEL_NAMES), str(p), fp, val, info)
