"""`rnnlab train / evaluate / predict` end to end, in-process, on a tiny CSV dataset."""

from __future__ import annotations

import io
import json
import random

import pytest

from rnnlab.cli import main

POSITIVE = ["good", "great", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and"]


@pytest.fixture
def csv_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(400):
        label = ("neg", "pos")[i % 2]
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 15))]
        words[rng.randrange(len(words))] = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        lines.append(f"{' '.join(words)},{label}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_args(csv_data, out, *extra):
    return [
        "train",
        "--set",
        "encoder=rnnlab",
        "--set",
        "embedding_dim=16",
        "--set",
        "hidden_size=16",
        "--set",
        "lr=0.05",
        "--set",
        "epochs=3",
        "--set",
        "batch_size=32",
        "--set",
        "device=cpu",
        "--data",
        str(csv_data),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_train_evaluate_predict(tmp_path, csv_data, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(_train_args(csv_data, run, "--set", "epochs=2")) == 0
    out = capsys.readouterr().out
    assert "Train Epoch: 2 Loss: " in out and "Test set: Average loss: " in out and "Parameters: " in out

    # An existing run directory is refused, then resumed to 3 epochs.
    before = (run / "metrics.jsonl").read_text()
    assert main(_train_args(csv_data, run)) == 2
    assert "already exists and holds a run (complete, 2/2 epochs); pass --resume" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before
    assert main(_train_args(csv_data, run, "--resume")) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert "Resuming from epoch 2" in capsys.readouterr().out

    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(rows[-1]["test_acc"], abs=1e-12)
    assert result["epoch"] == 3 and result["label_names"] == ["neg", "pos"]
    assert sum(map(sum, result["confusion_matrix"])) == result["n"] == 80
    assert main(["evaluate", str(run), "--data", str(csv_data)]) == 0
    text = capsys.readouterr().out
    assert f"Accuracy: {rows[-1]['test_acc']:.4f}" in text
    assert "precision" in text and "Confusion matrix (rows: true, columns: predicted):" in text

    assert main(["predict", str(run), "a superb and lovely film", "boring , awful movie", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in preds] == ["pos", "neg"] and all(p["probability"] > 0.5 for p in preds)
    monkeypatch.setattr("sys.stdin", io.StringIO("a great film\n\nterrible plot\n"))
    assert main(["predict", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"]
    assert lines[0].split("\t")[2] == "a great film" and 0.5 < float(lines[0].split("\t")[1]) <= 1

    assert main(["predict", str(run), "good", ""]) == 2
    assert "text 2 ('') is empty: it has no words to classify" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["train", "--set", "hiden_size=3", "--out", "X"],
            "unknown config key 'hiden_size' (did you mean 'hidden_size'?)",
        ),
        (["train", "--set", "epochs=two", "--out", "X"], "'epochs' expects an integer, got 'two'"),
        (["train", "--preset", "nope", "--out", "X"], "unknown preset 'nope'"),
        (["train", "--preset", "seed", "--out", "X"], "is a suite of experiments"),
        (["evaluate", "missing_run"], "run directory not found: missing_run"),
        (["predict", "missing_run", "text"], "run directory not found: missing_run"),
    ],
)
def test_user_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: ") and message in err
    assert not (tmp_path / "X").exists()


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a run directory: no run.json" in capsys.readouterr().err


def test_resume_without_preset_continues_the_run_as_it_was_set_up(tmp_path, csv_data, capsys):
    run = tmp_path / "run"
    assert main(_train_args(csv_data, run, "--set", "epochs=1", "--set", "hidden_size=12")) == 0
    # Only --out, --resume and the new epoch count: the run's own config.toml supplies the rest
    # (without it, the defaults would differ from the run's hidden_size=12 and be refused).
    assert main(["train", "--out", str(run), "--resume", "--set", "epochs=2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "hidden_size = 12" in (run / "config.toml").read_text()
