"""``rnnlab data inspect``: table and JSON output, errors through CLIError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import tiny_files, write_archive

from rnnlab.cli import main


def test_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    archive = write_archive(tmp_path / "a.tar.gz", tiny_files())
    rc = main(
        ["data", "inspect", "--data", str(archive), "--cache-dir", str(tmp_path / "c"), "--json", "--max-len", "4"]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["label_names"] == ["neg", "pos"]
    assert r["splits"]["train"]["per_label"] == {"neg": 3, "pos": 3}
    assert r["splits"]["test"]["per_label"] == {"neg": 2, "pos": 2}
    # train tokens: 4 + 4 + 5 (neg), 5 + 4 + 5 (pos) -> 27; 3 of 6 reviews have more than 4 tokens
    assert r["splits"]["train"]["tokens"] == 27 and r["splits"]["train"]["truncated"] == 3
    assert r["splits"]["train"]["length"]["max"] == 5 and r["splits"]["train"]["unk_rate"] == 0.0
    assert r["vocab_size"] == 2 + 19  # 19 distinct training words
    assert not r["encoding_from_cache"]


def test_inspect_table_and_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    archive = write_archive(tmp_path / "a.tar.gz", tiny_files())
    args = ["data", "inspect", "--data", str(archive), "--cache-dir", str(tmp_path / "c"), "--val-fraction", "0.3"]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "labels: neg, pos"
    assert [line.split()[0] for line in out if line.split()[:1] in (["train"], ["val"], ["test"])] == [
        "train",
        "val",
        "test",
    ] * 2
    assert out[-1].startswith("loaded in ") and "(from cache)" in out[-1]


def test_inspect_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "inspect", "--data", str(tmp_path / "missing.csv")]) == 2
    assert "rnnlab: error: " in capsys.readouterr().err
    bad = tmp_path / "d.csv"
    bad.write_text("body,label\nx,1\n")
    assert main(["data", "inspect", "--data", str(bad), "--cache-dir", str(tmp_path)]) == 2
    assert "no column(s) ['text']" in capsys.readouterr().err


def test_inspect_own_csv_with_columns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "reviews.csv"
    rows = [f'"{"nice film" if i % 2 else "bad film"} {i}",{"pos" if i % 2 else "neg"}' for i in range(10)]
    path.write_text("body,stars\n" + "\n".join(rows) + "\n")
    args = ["data", "inspect", "--data", str(path), "--text-column", "body", "--label-column", "stars"]
    args += ["--cache-dir", str(tmp_path / "c"), "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["label_names"] == ["neg", "pos"] and r["source"] == str(path)
    assert r["splits"]["train"]["per_label"] == {"neg": 4, "pos": 4}
    assert r["splits"]["test"]["per_label"] == {"neg": 1, "pos": 1}
    assert r["splits"]["test"]["tokens"] == 6  # "<word> film <i>" per text
    assert main([*args, "--test-fraction", "0.4"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["splits"]["test"]["per_label"] == {"neg": 2, "pos": 2} and r["splits"]["train"]["examples"] == 6
