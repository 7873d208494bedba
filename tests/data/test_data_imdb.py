"""IMDB loading: archives (official, labeled-only, pax/GNU), folders, metadata, splits, cache, errors."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from data_helpers import TINY, tiny_files, write_archive, write_tree

from rnnlab.data import DataError, load_imdb
from rnnlab.data import imdb as imdb_mod


def _flat(split):
    return list(
        zip(
            split.texts,
            split.labels,
            [m.get("rating") for m in split.meta],
            [m.get("group") for m in split.meta],
            [m["path"] for m in split.meta],
        )
    )


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return write_archive(tmp_path / "aclImdb_v1.tar.gz", tiny_files(official=True))


def test_archive_contents_order_and_metadata(archive: Path, tmp_path: Path) -> None:
    ds = load_imdb(archive, cache_dir=tmp_path / "cache", progress=False)
    assert ds.label_names == ["neg", "pos"]
    # sorted by (label, id); unsup, .feat, README and imdb.vocab are skipped
    assert ds.train.texts == [t for _, _, t in TINY[("train", "neg")]] + [t for _, _, t in TINY[("train", "pos")]]
    assert ds.train.labels == [0, 0, 0, 1, 1, 1]
    assert ds.test.labels == [0, 0, 1, 1]
    assert ds.train.meta[3] == {
        "rating": 9,
        "path": "train/pos/0_9.txt",
        "group": "http://www.imdb.com/title/tt0000001",
    }
    assert [m["rating"] for m in ds.test.meta] == [4, 2, 7, 9]
    assert ds.val is None and len(ds.fingerprint) == 64


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("gz", [True, False])
def test_archive_formats_and_folder_agree(tmp_path: Path, fmt: int, gz: bool) -> None:
    files = tiny_files(official=False)
    long_name = "x" * 120  # a path over 100 bytes needs a GNU long name, a pax record or the ustar prefix
    files[f"train/pos/{long_name}/../../unsup/3_3.txt"] = b"ignored"
    path = write_archive(tmp_path / ("a.tar.gz" if gz else "a.tar"), files, gz=gz, fmt=fmt)
    from_archive = load_imdb(path, cache_dir=tmp_path / "c", progress=False, use_cache=False)
    from_folder = load_imdb(write_tree(tmp_path, tiny_files(official=True)), cache_dir=tmp_path / "c", progress=False)
    assert _flat(from_archive.train) == _flat(from_folder.train)
    assert _flat(from_archive.test) == _flat(from_folder.test)


def test_folder_containing_aclimdb_and_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, tiny_files())
    monkeypatch.setenv("RNNLAB_DATA", str(tmp_path))  # the parent of aclImdb/ is accepted too
    ds = load_imdb(cache_dir=tmp_path / "c", progress=False)
    assert len(ds.train) == 6 and len(ds.test) == 4


def test_validation_split_by_movie_and_random(archive: Path, tmp_path: Path) -> None:
    ds = load_imdb(archive, cache_dir=tmp_path / "c", val_fraction=0.3, seed=0, progress=False)
    train_movies = {m["group"] for m in ds.train.meta}
    val_movies = {m["group"] for m in ds.val.meta}
    assert not train_movies & val_movies
    assert len(ds.train) + len(ds.val) == 6 and 1 <= len(ds.val) <= 3
    again = load_imdb(archive, cache_dir=tmp_path / "c", val_fraction=0.3, seed=0, progress=False)
    assert _flat(again.val) == _flat(ds.val) and again.fingerprint == ds.fingerprint
    assert again.fingerprint != load_imdb(archive, cache_dir=tmp_path / "c", progress=False).fingerprint
    rnd = load_imdb(archive, cache_dir=tmp_path / "c", val_fraction=1 / 3, val_split="random", progress=False)
    assert sorted(rnd.val.labels) == [0, 1]  # stratified: one of each label's three


def test_parsed_archive_cache_hit_corrupt_and_stale(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_imdb(archive, cache_dir=cache, progress=False)
    calls = []
    real = imdb_mod._read_archive
    monkeypatch.setattr(imdb_mod, "_read_archive", lambda p: calls.append(p) or real(p))
    assert _flat(load_imdb(archive, cache_dir=cache, progress=False).train) == _flat(first.train)
    assert calls == []  # served from the cache
    (entry,) = (cache / "imdb-texts").iterdir()
    blob = entry / "train.bin"
    data = bytearray(blob.read_bytes())
    data[5] ^= 0x20
    blob.write_bytes(bytes(data))
    assert _flat(load_imdb(archive, cache_dir=cache, progress=False).train) == _flat(first.train)
    assert len(calls) == 1  # corrupt entry detected and rebuilt
    files = tiny_files()
    files["train/pos/0_9.txt"] = b"Changed review."
    write_archive(archive, files)  # same path, new bytes: the fingerprint changes
    changed = load_imdb(archive, cache_dir=cache, progress=False)
    assert changed.train.texts[3] == "Changed review." and changed.fingerprint != first.fingerprint
    assert len(calls) == 2


def test_non_utf8_review_warns_and_is_replaced(tmp_path: Path) -> None:
    reviews = dict(TINY)
    reviews[("train", "pos")] = [(0, 9, b"caf\xe9 great"), *TINY[("train", "pos")][1:]]
    path = write_archive(tmp_path / "a.tar.gz", tiny_files(reviews=reviews))
    with pytest.warns(UnicodeWarning, match=r"1 review files held bytes that are not UTF-8.*train/pos/0_9.txt"):
        ds = load_imdb(path, cache_dir=tmp_path / "c", progress=False)
    assert ds.train.texts[3] == "caf\ufffd great"


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.tar.gz: no such file or folder; expected aclImdb_v1.tar.gz"):
        load_imdb(tmp_path / "nope.tar.gz", cache_dir=tmp_path)


def test_archive_not_aclimdb_shaped(tmp_path: Path) -> None:
    files = {k: v for k, v in tiny_files().items() if not k.startswith("test/neg/")}
    path = write_archive(tmp_path / "a.tar.gz", files)
    with pytest.raises(DataError, match=r"a.tar.gz: not an aclImdb dataset: no reviews in test/neg; expected"):
        load_imdb(path, cache_dir=tmp_path / "c")


def test_not_a_tar_and_truncated_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive at all" * 40)
    with pytest.raises(DataError, match=r"junk.tar.gz: not a tar or tar.gz archive"):
        load_imdb(junk, cache_dir=tmp_path / "c")
    good = write_archive(tmp_path / "good.tar.gz", tiny_files())
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut.tar.gz: (archive is truncated|corrupt gzip data)"):
        load_imdb(cut, cache_dir=tmp_path / "c")


def test_folder_missing_split_and_short_urls(tmp_path: Path) -> None:
    files = tiny_files()
    base = write_tree(tmp_path / "a", {k: v for k, v in files.items() if not k.startswith("test/neg")})
    with pytest.raises(DataError, match=r"not an aclImdb folder: test/neg/ is missing"):
        load_imdb(base, cache_dir=tmp_path / "c")
    files["train/urls_pos.txt"] = b"http://www.imdb.com/title/tt0000001/usercomments\n"
    path = write_archive(tmp_path / "b.tar.gz", files)
    with pytest.raises(
        DataError, match=r"train/urls_pos.txt has 1 lines; expected a line for review train/pos/1_10.txt"
    ):
        load_imdb(path, cache_dir=tmp_path / "c")


def test_group_split_without_urls(tmp_path: Path) -> None:
    files = {k: v for k, v in tiny_files().items() if "urls_" not in k}
    path = write_archive(tmp_path / "a.tar.gz", files)
    assert "group" not in load_imdb(path, cache_dir=tmp_path / "c").train.meta[0]
    with pytest.raises(DataError, match=r"validation split by movie needs train/urls_pos.txt"):
        load_imdb(path, cache_dir=tmp_path / "c", val_fraction=0.3)
