"""Your own data: CSV, TSV, JSONL and label-per-subfolder folders; splits; every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnlab.data import DataError, load_dataset, load_text_dataset


def _csv(path: Path, rows: list[tuple], header: str = "text,label", sep: str = ",") -> Path:
    lines = [header] + [sep.join(f'"{c}"' if sep == "," else str(c) for c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


ROWS = [(f"good text {i}", "good") for i in range(10)] + [(f"bad text {i}", "bad") for i in range(10)]


def test_csv_string_labels_stratified_test_split(tmp_path: Path) -> None:
    ds = load_text_dataset(_csv(tmp_path / "d.csv", ROWS), test_fraction=0.2, seed=3)
    assert ds.label_names == ["bad", "good"]
    assert sorted(ds.test.labels) == [0, 0, 1, 1] and sorted(ds.train.labels) == [0] * 8 + [1] * 8
    assert set(ds.train.texts).isdisjoint(ds.test.texts)
    assert set(ds.train.texts) | set(ds.test.texts) == {t for t, _ in ROWS}
    again = load_text_dataset(tmp_path / "d.csv", test_fraction=0.2, seed=3)
    assert again.test.texts == ds.test.texts and again.fingerprint == ds.fingerprint
    assert load_text_dataset(tmp_path / "d.csv", test_fraction=0.2, seed=4).fingerprint != ds.fingerprint


def test_tsv_custom_columns_and_separate_test(tmp_path: Path) -> None:
    train = _csv(
        tmp_path / "train.tsv",
        [("nice", "pos"), ("awful", "neg"), ("fine", "pos")],
        header="review\tsentiment",
        sep="\t",
    )
    test = _csv(tmp_path / "test.tsv", [("meh", "neg")], header="review\tsentiment", sep="\t")
    ds = load_text_dataset(train, test, text_column="review", label_column="sentiment")
    assert (ds.train.texts, ds.train.labels) == (["nice", "awful", "fine"], [1, 0, 1])
    assert (ds.test.texts, ds.test.labels, ds.label_names) == (["meh"], [0], ["neg", "pos"])
    assert ds.train.meta[0]["path"] == str(train)


def test_jsonl_integer_labels_sorted_numerically_and_validation(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": [2, 10][i % 2]} for i in range(20)]
    ds = load_text_dataset(_jsonl(tmp_path / "d.jsonl", rows), val_fraction=0.25, test_fraction=0.2)
    assert ds.label_names == ["2", "10"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 4)
    assert sorted(ds.val.labels) == [0, 0, 1, 1]
    assert not set(ds.val.texts) & set(ds.train.texts)


def test_group_column_keeps_groups_on_one_side(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2, "doc": f"g{i // 4}"} for i in range(40)]
    ds = load_text_dataset(_jsonl(tmp_path / "d.jsonl", rows), group_column="doc", test_fraction=0.3, val_fraction=0.2)
    sides = [{m["group"] for m in s.meta} for s in (ds.train, ds.val, ds.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sum(map(len, sides)) == 10 and len(ds.test) == 12  # 3 groups of 4 = 30% exactly


def test_label_per_subfolder_folder(tmp_path: Path) -> None:
    for label, texts in {"spam": ["buy now", "cheap pills"], "ham": ["hi mum", "see you", "lunch?"]}.items():
        (tmp_path / "train" / label).mkdir(parents=True)
        for i, t in enumerate(texts):
            (tmp_path / "train" / label / f"{i}.txt").write_text(t)
    (tmp_path / "train" / "ham" / "notes.md").write_text("not a review")
    ds = load_dataset(tmp_path / "train", test_fraction=0.4)
    assert ds.label_names == ["ham", "spam"]
    assert sorted(ds.train.labels + ds.test.labels) == [0, 0, 0, 1, 1]
    assert sorted(ds.train.texts + ds.test.texts) == ["buy now", "cheap pills", "hi mum", "lunch?", "see you"]


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"none.csv: no such file or folder; expected a .csv, .tsv or .jsonl"):
        load_text_dataset(tmp_path / "none.csv")
    with pytest.raises(DataError, match=r"none.csv: no such file or folder; expected an IMDB archive"):
        load_dataset(tmp_path / "none.csv")


def test_csv_without_named_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", [("x", "y")], header="body,label")
    with pytest.raises(
        DataError,
        match=r"d.csv: no column\(s\) \['text'\]; expected columns \['text', 'label'\], "
        r"found \['body', 'label'\]",
    ):
        load_text_dataset(path)


def test_empty_text_and_missing_label_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"ok",a\n"  ",b\n', "utf-8")
    with pytest.raises(DataError, match=r"d.csv:3: empty or missing text in column 'text'"):
        load_text_dataset(path)
    path.write_text('text,label\n"ok",a\n"fine",\n', "utf-8")
    with pytest.raises(DataError, match=r"d.csv:3: missing or invalid label in column 'label': ''"):
        load_text_dataset(path)
    jl = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": None}])
    with pytest.raises(DataError, match=r"d.jsonl:2: missing or invalid label in column 'label': None"):
        load_text_dataset(jl)
    _jsonl(jl, [{"text": "a", "label": 1}, {"txt": "b", "label": 0}])
    with pytest.raises(DataError, match=r"d.jsonl:2: no 'text' field"):
        load_text_dataset(jl)
    jl.write_text('{"text": "a", "label": 1}\n{"text": \n', "utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_text_dataset(jl)


def test_one_class_empty_dataset_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"the train split has 1 class\(es\); expected at least 2 labels"):
        load_text_dataset(_csv(tmp_path / "one.csv", [(f"t{i}", "pos") for i in range(10)]))
    with pytest.raises(DataError, match=r"empty.csv: no rows; expected a header and at least one row with .text."):
        load_text_dataset(_csv(tmp_path / "empty.csv", []))
    (tmp_path / "d.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"d.xlsx: unknown file type '.xlsx'; expected .csv, .tsv, .jsonl"):
        load_text_dataset(tmp_path / "d.xlsx")
    (tmp_path / "nolabels").mkdir()
    with pytest.raises(DataError, match=r"nolabels: expected one subfolder of .txt files per label"):
        load_text_dataset(tmp_path / "nolabels")


def test_non_utf8_bytes_warn_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ncaf\xe9,a\nok,b\nfine,a\nnice,b\n")
    with pytest.warns(UnicodeWarning, match=r"d.csv: bytes that are not UTF-8 were decoded with U\+FFFD"):
        ds = load_text_dataset(path, test_fraction=0.5, seed=0)
    assert "caf\ufffd" in ds.train.texts + ds.test.texts
    for label, name in (("a", "0.txt"), ("b", "1.txt")):
        (tmp_path / "f" / label).mkdir(parents=True)
        (tmp_path / "f" / label / name).write_bytes(b"\xff\xfe bad" if label == "a" else b"good")
    with pytest.warns(UnicodeWarning, match=r"1 files held bytes that are not UTF-8.*f/a/0.txt"):
        load_text_dataset(tmp_path / "f", tmp_path / "f")


def test_fraction_leaving_an_empty_split(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", [("a", "x"), ("b", "y"), ("c", "x"), ("d", "y")])
    with pytest.raises(DataError, match=r"d.csv: test fraction 0.1 of 4 examples leaves an empty split"):
        load_text_dataset(path, test_fraction=0.1)


def test_csv_with_bom_quoted_newlines_and_jsonl_line_separator(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes('\ufefftext,label\n"two\nlines, quoted",a\nplain\u2028text,b\n'.encode("utf-8"))
    ds = load_text_dataset(path, path)
    assert ds.train.texts == ["two\nlines, quoted", "plain\u2028text"] and ds.train.labels == [0, 1]
    jl = _jsonl(tmp_path / "d.jsonl", [{"text": "x\u2028y", "label": "a"}, {"text": "z", "label": "b"}])
    jl.write_text(jl.read_text("utf-8").replace("\\u2028", "\u2028"), "utf-8")  # a raw U+2028 inside a string
    assert load_text_dataset(jl, jl).train.texts == ["x\u2028y", "z"]


def test_iter_texts_reads_lines_and_table_columns(tmp_path: Path) -> None:
    from rnnlab.data import iter_texts

    txt = tmp_path / "t.txt"
    txt.write_bytes(b"\xef\xbb\xbffirst text\r\nsecond, with a comma\rthird\n")
    assert list(iter_texts(txt)) == [(1, "first text"), (2, "second, with a comma"), (3, "third")]
    table = _csv(tmp_path / "t.csv", [("r1", "good film", "x"), ("r2", "line\nbreak", "y")], header="id,review,other")
    assert list(iter_texts(table, text_column="review")) == [(2, "good film"), (4, "line\nbreak")]
    jl = _jsonl(tmp_path / "t.jsonl", [{"review": "a"}, {"review": "b", "stars": 3}])
    assert list(iter_texts(jl, text_column="review")) == [(1, "a"), (2, "b")]


def test_iter_texts_errors(tmp_path: Path) -> None:
    from rnnlab.data import iter_texts

    with pytest.raises(DataError, match=r"none.txt: no such file; expected a text file \(one text a line\) or a "):
        list(iter_texts(tmp_path / "none.txt"))
    with pytest.raises(DataError, match=r": is a folder; expected a text file"):
        list(iter_texts(tmp_path))
    txt = tmp_path / "t.txt"
    txt.write_text("one\n\nthree\n")
    with pytest.raises(DataError, match=r"t.txt:2: empty line; expected one text a line \(remove the empty lines\)"):
        list(iter_texts(txt))
    txt.write_text("")
    with pytest.raises(DataError, match=r"t.txt: no texts; expected one text a line"):
        list(iter_texts(txt))
    table = _csv(tmp_path / "t.csv", [("1", "x")], header="id,body")
    with pytest.raises(
        DataError,
        match=r"t.csv: no column\(s\) \['text'\]; expected columns \['text'\], found \['id', 'body'\] "
        r"\(name yours with text_column",
    ):
        list(iter_texts(table))
    _csv(table, [("1", "x"), ("2", " ")], header="id,text")
    with pytest.raises(DataError, match=r"t.csv:3: empty or missing text in column 'text'"):
        list(iter_texts(table))
    jl = _jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"body": "b"}])
    with pytest.raises(DataError, match=r"t.jsonl:2: no 'text' field; expected fields 'text', found \['body'\]"):
        list(iter_texts(jl))
