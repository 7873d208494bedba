"""Builders for tiny aclImdb-shaped folders and archives used by the data tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

# (split, label) -> list of (id, rating, text); ids are the line numbers in urls_<label>.txt.
TINY = {
    ("train", "pos"): [
        (0, 9, "A great film.<br /><br />Loved it!"),
        (1, 10, "Wonderful acting, great story."),
        (2, 8, "Great fun; don't miss it."),
    ],
    ("train", "neg"): [
        (0, 1, "Awful. Just awful film."),
        (1, 2, "Boring plot, bad acting."),
        (2, 3, "I didn't like it: bad."),
    ],
    ("test", "pos"): [(0, 7, "Great great movie."), (1, 9, "A lovely film.")],
    ("test", "neg"): [(0, 4, "Bad, bad movie."), (1, 2, "Dull and zzzunseen.")],
}
# review id -> movie url (train: reviews 0 and 1 are about the same movie)
URLS = {
    ("train", "pos"): [
        "http://www.imdb.com/title/tt0000001/usercomments",
        "http://www.imdb.com/title/tt0000001/usercomments",
        "http://www.imdb.com/title/tt0000002/usercomments",
    ],
    ("train", "neg"): [
        "http://www.imdb.com/title/tt0000003/usercomments",
        "http://www.imdb.com/title/tt0000003/usercomments",
        "http://www.imdb.com/title/tt0000004/usercomments",
    ],
    ("test", "pos"): ["http://www.imdb.com/title/tt0000005/usercomments"] * 2,
    ("test", "neg"): ["http://www.imdb.com/title/tt0000006/usercomments"] * 2,
}


def tiny_files(official: bool = True, reviews: dict | None = None) -> dict[str, bytes]:
    """Relative path (under ``aclImdb/``) -> content; ``official`` adds unsup and .feat files to skip."""
    reviews = reviews or TINY
    files: dict[str, bytes] = {"README": b"tiny aclImdb for tests\n", "imdb.vocab": b"the\nand\n"}
    for (split, label), items in reviews.items():
        for rid, rating, text in items:
            files[f"{split}/{label}/{rid}_{rating}.txt"] = text.encode("utf-8") if isinstance(text, str) else text
        files[f"{split}/urls_{label}.txt"] = ("\n".join(URLS[(split, label)]) + "\n").encode()
    if official:
        files["train/unsup/0_0.txt"] = b"Unlabelled review that must be skipped."
        files["train/urls_unsup.txt"] = b"http://www.imdb.com/title/tt9999999/usercomments\n"
        files["train/labeledBow.feat"] = b"0:1 1:2\n"
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` under ``root/aclImdb`` and return that folder."""
    base = root / "aclImdb"
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return base


def tar_bytes(
    files: dict[str, bytes], *, gz: bool = True, prefix: str = "aclImdb", fmt: int = tarfile.GNU_FORMAT
) -> bytes:
    """A (gzip-compressed) tar archive holding ``files`` under ``prefix/``, with directory entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as tf:
        dirs = sorted({str(Path(prefix, rel).parent) for rel in files} | {prefix})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{prefix}/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(path: Path, files: dict[str, bytes], **kw) -> Path:
    path.write_bytes(tar_bytes(files, **kw))
    return path
