"""`rnnlab predict`: options anywhere on the line; --file (text, CSV, JSONL) batched, as JSONL, CSV, JSON
or a table, to stdout or atomically to --output; every bad input refused before anything is written."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from rnnlab.cli import main
from rnnlab.train import predict
from rnnlab.train.evaluate import load_run

POSITIVE = ["good", "great", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and"]
TEXTS = ["a superb and lovely film", "boring , awful movie", "the plot was great", "dull", "it was a film"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained on a CSV whose text column is `review` (3 epochs of a tiny LSTM)."""
    root = tmp_path_factory.mktemp("predict")
    rng = random.Random(0)
    with open(root / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "label"])
        for i in range(400):
            label = ("neg", "pos")[i % 2]
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 15))]
            words[rng.randrange(len(words))] = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
            w.writerow([" ".join(words), label])
    args = ["train", "--data", str(root / "reviews.csv"), "--text-column", "review", "--out", str(root / "run")]
    args += ["--set", "embedding_dim=16", "--set", "hidden_size=16", "--set", "lr=0.05", "--set", "epochs=3"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNLAB_CACHE", str(root / "cache"))
        assert main([*args, "--set", "batch_size=32", "--set", "device=cpu", "--no-progress"]) == 0
    return root / "run"


def _out(capsys) -> str:
    return capsys.readouterr().out


def test_options_anywhere_on_the_line(run, capsys):
    assert main(["predict", "--json", str(run), *TEXTS[:2]]) == 0
    first = _out(capsys)
    assert main(["predict", str(run), "--json", *TEXTS[:2]]) == 0
    assert _out(capsys) == first
    assert main(["predict", str(run), TEXTS[0], "--checkpoint", "last", TEXTS[1], "--json"]) == 0
    assert _out(capsys) == first
    assert [p["label"] for p in json.loads(first)] == ["pos", "neg"]


def test_file_of_lines_equals_the_texts_as_arguments(run, tmp_path, capsys):
    expected = predict(run, TEXTS)
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(TEXTS) + "\n")
    assert main(["predict", str(run), "--file", str(f), "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]  # jsonl by default
    assert [r.pop("line") for r in rows] == [1, 2, 3, 4, 5]
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    for r, e in zip(rows, expected):  # batches of 2 and 1 pad less than one batch of 5: equal up to rounding
        assert r["text"] == e["text"] and r["probability"] == pytest.approx(e["probability"], abs=1e-6)
    assert "predicting: 100%" in captured.err and "5/5" in captured.err  # the progress bar, on stderr
    assert main(["predict", str(run), "--file", str(f), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_csv_and_jsonl_files_with_a_text_column(run, tmp_path, capsys):
    expected = predict(run, TEXTS)
    table = tmp_path / "in.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "review"])
        w.writerows([i, t] for i, t in enumerate(TEXTS))
    # the run's text_column (review) is the default; --format csv: a header, then one row a text
    assert main(["predict", str(run), "--file", str(table), "--format", "csv", "--no-progress"]) == 0
    rows = list(csv.reader(io.StringIO(_out(capsys))))
    assert rows[0] == ["line", "label", "probability", "p_neg", "p_pos", "text"]
    assert [r[0] for r in rows[1:]] == ["2", "3", "4", "5", "6"] and [r[5] for r in rows[1:]] == TEXTS
    for r, e in zip(rows[1:], expected):
        assert r[1] == e["label"] and float(r[2]) == pytest.approx(e["probability"], abs=1e-6)
        assert float(r[3]) + float(r[4]) == pytest.approx(1.0) and float(r[2]) == max(float(r[3]), float(r[4]))
    jl = tmp_path / "in.jsonl"
    jl.write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(TEXTS)))
    assert main(["predict", str(run), "--file", str(jl), "--text-column", "body", "--no-progress"]) == 0
    assert [json.loads(line)["label"] for line in _out(capsys).splitlines()] == [e["label"] for e in expected]


def test_output_file_format_from_its_suffix_and_atomic(run, tmp_path, capsys):
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), "--file", str(f), "--output", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().err == f"wrote 5 predictions to {out} (csv)\n"
    before = out.read_text()
    assert before.startswith("line,label,probability,p_neg,p_pos,text\n1,pos,") and len(before.splitlines()) == 6
    # A bad text anywhere in the file: an error before any prediction; the old output is kept whole.
    f.write_text("\n".join(TEXTS) + "\n!!\n")
    assert main(["predict", str(run), "--file", str(f), "--output", str(out), "--no-progress"]) == 2
    assert f"rnnlab: error: {f}:6 ('!!') is empty: it has no words to classify" in capsys.readouterr().err
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "texts.txt"]
    # the same on stdout: nothing is printed before the error
    assert main(["predict", str(run), "--file", str(f), "--format", "csv"]) == 2
    assert capsys.readouterr().out == ""


def test_json_output_is_one_array(run, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["predict", str(run), *TEXTS[:3], "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [d["text"] for d in data] == TEXTS[:3] and "line" not in data[0]
    assert main(["predict", str(run), *TEXTS[:3], "--json"]) == 0
    assert json.loads(_out(capsys)) == data


def test_table_and_stdin(run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a great film\n\nterrible plot\n"))
    assert main(["predict", str(run), "--no-progress"]) == 0
    lines = _out(capsys).splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"] and lines[1].endswith("\tterrible plot")
    monkeypatch.setattr("sys.stdin", io.StringIO("a great film\n\n!!\n"))
    assert main(["predict", str(run), "--no-progress"]) == 2
    assert "stdin line 3 ('!!') is empty: it has no words to classify" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name,content,extra,message",
    [
        (
            "nope.txt",
            None,
            [],
            "nope.txt: no such file; expected a text file (one text a line) or a CSV/TSV/JSONL file with a 'review' "
            "column",
        ),
        ("in.txt", "good\n\nbad\n", [], "in.txt:2: empty line; expected one text a line (remove the empty lines)"),
        (
            "in.csv",
            "id,body\n1,good\n",
            [],
            "in.csv: no column(s) ['review']; expected columns ['review'], found ['id', 'body']",
        ),
        (
            "in.jsonl",
            '{"body": "good"}\n',
            [],
            "in.jsonl:1: no 'review' field; expected fields 'review', found ['body']",
        ),
        ("in.txt", "good\n", ["also", "this"], "give the texts as arguments or in --file PATH, not both"),
        ("in.txt", "good\n", ["--json", "--format", "csv"], "--json and --format csv disagree: give one of them"),
        ("in.txt", "good\n", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ("in.txt", "good\n", ["--output", "in.txt"], "is the --file to classify: choose another output file"),
    ],
)
def test_bad_input(run, tmp_path, capsys, monkeypatch, name, content, extra, message):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path(name).write_text(content)
    assert main(["predict", str(run), "--file", name, *extra]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if content is not None else [])
    if content is not None:
        assert Path(name).read_text() == content


def test_text_column_needs_a_file(run, capsys):
    assert main(["predict", str(run), "good", "--text-column", "review"]) == 2
    assert "--text-column names the text column of a --file table; give --file PATH" in capsys.readouterr().err


def test_iter_predictions_batches_and_checks_first(run):
    from rnnlab.train.evaluate import iter_predictions

    loaded = load_run(run)
    calls = []

    def texts():
        calls.append(1)
        return enumerate(TEXTS, 1)

    rows = iter_predictions(loaded, texts, batch_size=2)
    assert len(calls) == 2  # once to check every text, once (lazily) to classify
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"doc 2 \('  '\) is empty"):
        iter_predictions(loaded, lambda: enumerate(["good", "  "], 1), where="doc {}".format)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        iter_predictions(loaded, texts, batch_size=0)


def test_predict_help_lists_the_file_options(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--file PATH", "--text-column NAME", "--format {table,json,jsonl,csv}", "--output FILE"):
        assert option in text
