"""Your own data everywhere: `train`, `--resume`, `evaluate`, `predict` and `compare` take the dataset
options of `data inspect` (--test, the column names, the group column, a test fraction) as config keys."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from rnnlab.cli import main
from rnnlab.train import Config, ConfigError, load_config
from rnnlab.train.config import config_from_toml
from rnnlab.train.dataset import OWN_DATA_KEYS, dataset_options, load_key, load_texts

POSITIVE = ["good", "great", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and"]
#: A small fast model (every run below trains in about a second).
SMALL = ["--set", "embedding_dim=16", "--set", "hidden_size=16", "--set", "lr=0.05", "--set", "batch_size=32"]
SMALL += ["--set", "device=cpu", "--set", "epochs=1", "--no-progress"]
COLUMNS = ["--text-column", "review", "--label-column", "sentiment"]


def write_reviews(path: Path, n: int, seed: int) -> Path:
    """A CSV with columns id, review, sentiment (negative/positive, alternating), movie (37 groups)."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "review", "sentiment", "movie"])
        for i in range(n):
            label = ("negative", "positive")[i % 2]
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
            words[rng.randrange(len(words))] = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
            w.writerow([i, " ".join(words), label, f"m{i % 37}"])
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNLAB_DATA", raising=False)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_resume_evaluate_predict_use_the_columns_groups_and_test_fraction(tmp_path, capsys):
    data = write_reviews(tmp_path / "reviews.csv", 300, 0)
    run = tmp_path / "run"
    # Without the column names the CSV is refused, naming the columns it has.
    assert main(["train", "--data", str(data), "--out", str(run), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "no column(s) ['text', 'label']; expected columns ['text', 'label'], found ['id', 'review', " in err
    assert "(name yours with text_column / label_column / group_column, e.g. --text-column review)" in err

    args = ["train", "--data", str(data), *COLUMNS, "--group-column", "movie", "--test-fraction", "0.25"]
    assert main([*args, "--out", str(run), *SMALL]) == 0
    config = config_from_toml(run / "config.toml")
    assert (config.text_column, config.label_column, config.group_column, config.test_fraction) == (
        "review",
        "sentiment",
        "movie",
        0.25,
    )
    assert config.test_data == ""
    # 9 of the 37 movies (72 of 300 reviews, closest to 25%) are the test split; no movie on both sides.
    ds = load_texts(config, progress=False)
    assert (len(ds.train), len(ds.test), ds.label_names) == (228, 72, ["negative", "positive"])
    assert {m["group"] for m in ds.train.meta}.isdisjoint(m["group"] for m in ds.test.meta)

    # --resume alone continues with the run's own data keys.
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--set", "epochs=2", "--no-progress"]) == 0
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "Resuming from epoch 1" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 72 and result["label_names"] == ["negative", "positive"]
    assert result["accuracy"] == pytest.approx(rows[-1]["test_acc"], abs=1e-12)

    # predict --file reads the run's text column by default.
    assert main(["predict", str(run), "--file", str(data), "--no-progress"]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(preds) == 300 and preds[0]["line"] == 2 and preds[0]["text"] == ds.train.texts[0]


def test_a_separate_test_file(tmp_path, capsys):
    train = write_reviews(tmp_path / "train.csv", 200, 1)
    test = write_reviews(tmp_path / "test.csv", 60, 2)
    run = tmp_path / "run"
    base = ["train", "--data", str(train), *COLUMNS, "--out", str(run), *SMALL]
    assert main([*base, "--test", str(test), "--test-fraction", "0.3"]) == 2
    assert (
        "'test_fraction' (0.3) splits a test set off the data, but test_data "
        f"({str(test)!r}) is the test set: set one of them, not both" in capsys.readouterr().err
    )
    assert not run.exists()
    assert main([*base, "--test", str(test)]) == 0
    assert config_from_toml(run / "config.toml").test_data == str(test)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 60  # the whole test file
    other = write_reviews(tmp_path / "other.csv", 50, 3)
    assert main(["evaluate", str(run), "--json", "--test", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 50
    # --data alone: its test split is held out with the run's columns and test fraction (0.2).
    assert main(["evaluate", str(run), "--json", "--data", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10


def test_compare_takes_the_dataset_options(tmp_path, capsys):
    data = write_reviews(tmp_path / "reviews.csv", 300, 0)
    out = tmp_path / "cmp"
    args = ["compare", "--preset", "seed", "--only", "lstm", "--data", str(data), *COLUMNS]
    args += ["--group-column", "movie", "--test-fraction", "0.25", "--out", str(out), *SMALL]
    assert main(args) == 0
    config = config_from_toml(out / "lstm" / "seed0" / "config.toml")
    assert (config.name, config.text_column, config.group_column, config.test_fraction) == (
        "lstm",
        "review",
        "movie",
        0.25,
    )
    assert _rows(out / "lstm" / "seed0")[0]["epoch"] == 1
    baseline = json.loads((out / "nbsvm_bigram" / "run.json").read_text())
    assert "228 train / 72 test texts" in baseline["description"]  # the same split as the runs
    table = (out / "results.md").read_text()
    assert "| `lstm` | 1 | " in table and "| `nbsvm_bigram` | 1 | " in table


def test_config_keys_defaults_and_validation():
    c = Config()
    assert (c.text_column, c.label_column, c.group_column, c.test_fraction, c.test_data) == (
        "text",
        "label",
        "",
        0.2,
        "",
    )
    for overrides, message in [
        (["test_fraction=0"], r"'test_fraction' must be in \(0, 1\), got 0.0"),
        (["test_fraction=1"], r"'test_fraction' must be in \(0, 1\), got 1.0"),
        (["text_column= "], r"'text_column' must name a column of your data, got ' '"),
        (["label_column=text"], r"'text_column' and 'label_column' must be different columns, both are 'text'"),
        (["group_column=label"], r"'group_column' must differ from the text and label columns \('text', 'label'\)"),
        (["test_data=t.csv", "test_fraction=0.5"], r"'test_fraction' \(0.5\) splits a test set off the data"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=overrides)


def test_own_data_keys_are_refused_for_imdb(monkeypatch):
    with pytest.raises(
        ConfigError,
        match=r"text_column='review', test_fraction=0.3: these keys apply to your own CSV/TSV/JSONL or folder "
        r"data, but the data is x/aclImdb_v1.tar.gz, the IMDB dataset with its own train/test split",
    ):
        dataset_options(Config(data="x/aclImdb_v1.tar.gz", text_column="review", test_fraction=0.3))
    with pytest.raises(
        ConfigError, match=r"test_data='t.csv': .* IMDB \(no data path: \$RNNLAB_DATA or the download\)"
    ):
        dataset_options(Config(test_data="t.csv"))
    assert dataset_options(Config(data="x/aclImdb_v1.tar.gz", val_fraction=0.1))["val_fraction"] == 0.1


def test_old_run_directories_load_with_the_defaults(tmp_path):
    """A config.toml written before these keys existed still loads, to the same data as before."""
    text = "".join(line + "\n" for line in Config().to_toml().splitlines() if line.split(" =")[0] not in OWN_DATA_KEYS)
    (tmp_path / "config.toml").write_text(text)
    assert config_from_toml(tmp_path / "config.toml") == Config()


def test_every_dataset_key_is_in_the_load_key():
    base = load_key(Config(data="d.csv"))
    changed = dict(test_data="t.csv", text_column="body", label_column="y", group_column="g", val_fraction=0.1)
    for key, value in {**changed, "test_fraction": 0.3, "val_split": "random"}.items():
        assert load_key(Config(data="d.csv").replace(**{key: value})) != base, key
