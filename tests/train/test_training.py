"""train_and_evaluate: learning, determinism, resume, run directories and their failure modes."""

from __future__ import annotations

import json
import re

import pytest
import torch
from train_helpers import tiny_config

import rnnlab.train.runner as runner
from rnnlab.rundir import RunDir
from rnnlab.train import (
    FORMAT,
    ConfigError,
    RunDirError,
    TrainingError,
    evaluate_run,
    predict,
    read_metrics,
    train_and_evaluate,
)

TIMING = ("epoch_seconds", "examples_per_second", "eval_seconds")


def _values(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _weights(run_dir, name="last"):
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_learns_and_writes_the_run_directory(tmp_path, tiny_data, capsys):
    rows = train_and_evaluate(tiny_config(epochs=5), tmp_path / "run", data=tiny_data, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    assert rows[-1]["test_acc"] > 0.9
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [
            "checkpoints",
            "config.toml",
            "metrics.jsonl",
            "model.txt",
            "run.json",
            "tokenizer.json",
            "train.log",
            "vocab.json",
        ]
    )
    assert read_metrics(run) == rows
    assert set(rows[0]) == {
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "epoch_seconds",
        "examples_per_second",
        "eval_seconds",
        "lr",
    }
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["format"] == FORMAT
    assert (info["epochs_completed"], info["epochs"], info["seed"], info["name"]) == (5, 5, 0, "tiny")
    assert info["num_params"] == sum(p.numel() for p in _weights(run).values())
    out = capsys.readouterr().out
    for r in rows:
        assert f"Train Epoch: {r['epoch']} Loss: {r['train_loss']:.6f} Acc: {r['train_acc']:.6f}" in out
        assert f"Test set: Average loss: {r['test_loss']:.4f}, Accuracy: {r['test_acc']:.4f}" in out
    log = (run / "train.log").read_text()
    assert log.startswith(f"vocab_size: {len(tiny_data.vocab)}\nImdbNet(\n  (embedding): Embedding(")
    assert len(re.findall(r"^Train Epoch: \d Loss: \d\.\d{6} Acc: \d\.\d{6}$", log, re.M)) == 5
    assert len(re.findall(r"^Test set: Average loss: \d\.\d{4}, Accuracy: \d\.\d{4}$", log, re.M)) == 5
    assert "Parameters: " in out


def test_same_seed_same_metrics_and_weights(tmp_path, tiny_data):
    config = tiny_config(embedding_dropout=0.2, head_dropout=0.2, word_dropout=0.1, bucket=True)
    a = train_and_evaluate(config, tmp_path / "a", data=tiny_data, progress=False)
    b = train_and_evaluate(config, tmp_path / "b", data=tiny_data, progress=False)
    assert _values(a) == _values(b)
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    c = train_and_evaluate(config.replace(seed=1), tmp_path / "c", data=tiny_data, progress=False)
    assert _values(c) != _values(a)


@pytest.mark.parametrize("cell,encoder", [("lstm", "rnnlab"), ("gru", "torch")])
def test_resume_equals_uninterrupted(tmp_path, tiny_data, cell, encoder):
    config = tiny_config(
        cell=cell,
        encoder=encoder,
        embedding_dropout=0.2,
        word_dropout=0.1,
        lr_schedule="cosine",
        warmup_steps=3,
        optimizer="adamw",
        weight_decay=0.01,
        grad_clip=1.0,
        bucket=True,
    )
    full = train_and_evaluate(config, tmp_path / "full", data=tiny_data, progress=False)
    # The run is killed during epoch 2, at its 3rd step.
    original = runner._train_epoch
    calls = {"n": 0}

    def killed_criterion(cfg):
        crit = torch.nn.CrossEntropyLoss()

        def loss(out, y):
            calls["n"] += torch.is_grad_enabled()  # training steps only, not evaluation batches
            if calls["n"] == 8 + 3:  # 8 steps per epoch (256 / 32)
                raise KeyboardInterrupt
            return crit(out, y)

        return loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_criterion", killed_criterion)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(config, tmp_path / "cut", data=tiny_data, progress=False)
    assert runner._train_epoch is original
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert (info["status"], info["epochs_completed"], "error" in info) == ("interrupted", 1, False)
    assert len(read_metrics(tmp_path / "cut")) == 1
    assert not (tmp_path / "cut" / ".lock").exists()  # released when the run stopped
    resumed = train_and_evaluate(config, tmp_path / "cut", data=tiny_data, resume=True, progress=False)
    assert _values(resumed) == _values(full)
    _assert_same_weights(_weights(tmp_path / "cut"), _weights(tmp_path / "full"))
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("after", ["last.pt", "metrics.jsonl"])
def test_interrupt_between_the_epoch_end_writes_leaves_them_agreeing(tmp_path, tiny_data, after):
    """Ctrl-C right after one of epoch 2's writes: run.json, metrics.jsonl and last.pt all say 2 epochs."""
    config = tiny_config(epochs=3)
    full = train_and_evaluate(config, tmp_path / "full", data=tiny_data, progress=False)
    fired = []

    def interrupting(fn, hit):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            if not fired and hit(*args):
                fired.append(True)
                raise KeyboardInterrupt
            return out

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        if after == "last.pt":
            mp.setattr(
                RunDir,
                "save_checkpoint",
                interrupting(RunDir.save_checkpoint, lambda rd, which, obj: which == "last" and obj["epoch"] == 2),
            )
        else:
            mp.setattr(RunDir, "append_metrics", interrupting(RunDir.append_metrics, lambda rd, row: row["epoch"] == 2))
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(config, tmp_path / "cut", data=tiny_data, progress=False)
    assert fired
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    last = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert info["status"] == "interrupted"
    assert info["epochs_completed"] == len(read_metrics(tmp_path / "cut")) == last["epoch"] == 2
    assert info["best_epoch"] == last["best"]["epoch"]
    resumed = train_and_evaluate(config, tmp_path / "cut", data=tiny_data, resume=True, progress=False)
    assert _values(resumed) == _values(full)


def test_train_one_epoch_then_resume_to_two(tmp_path, tiny_data):
    full = train_and_evaluate(tiny_config(), tmp_path / "full", data=tiny_data, progress=False)
    train_and_evaluate(tiny_config(epochs=1), tmp_path / "r", data=tiny_data, progress=False)
    resumed = train_and_evaluate(tiny_config(), tmp_path / "r", data=tiny_data, resume=True, progress=False)
    assert _values(resumed) == _values(full)
    assert "\nepochs = 2\n" in (tmp_path / "r" / "config.toml").read_text()
    _assert_same_weights(_weights(tmp_path / "r"), _weights(tmp_path / "full"))
    # Resuming a complete run trains nothing and returns its metrics.
    before = (tmp_path / "r" / "checkpoints" / "last.pt").read_bytes()
    again = train_and_evaluate(tiny_config(), tmp_path / "r", data=tiny_data, resume=True, progress=False)
    assert again == resumed and (tmp_path / "r" / "checkpoints" / "last.pt").read_bytes() == before
    with pytest.raises(RunDirError, match="with epochs=1: it has 2 epochs completed"):
        train_and_evaluate(tiny_config(epochs=1), tmp_path / "r", data=tiny_data, resume=True, progress=False)


def _snapshot(run_dir):
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_existing_run_dir_is_refused_and_untouched(tmp_path, tiny_data):
    run = tmp_path / "run"
    train_and_evaluate(tiny_config(epochs=1), run, data=tiny_data, progress=False)
    before = _snapshot(run)
    with pytest.raises(
        RunDirError,
        match=r"already exists and holds a run \(complete, 1/1 epochs\); "
        r"pass --resume to continue it or --overwrite to replace it",
    ):
        train_and_evaluate(tiny_config(epochs=1), run, data=tiny_data, progress=False)
    with pytest.raises(RunDirError, match="exclude each other"):
        train_and_evaluate(tiny_config(epochs=1), run, data=tiny_data, resume=True, overwrite=True)
    with pytest.raises(
        RunDirError,
        match=r"the config differs from the run's config.toml in hidden_size: "
        r"run has 16, now 32",
    ):
        train_and_evaluate(tiny_config(hidden_size=32), run, data=tiny_data, resume=True, progress=False)
    assert _snapshot(run) == before
    rows = train_and_evaluate(tiny_config(epochs=1, seed=5), run, data=tiny_data, overwrite=True, progress=False)
    assert json.loads((run / "run.json").read_text())["seed"] == 5 and len(rows) == 1


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, tiny_data):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(RunDirError, match="not a run directory \\(no run.json\\); refusing to delete it"):
        train_and_evaluate(tiny_config(), precious, data=tiny_data, overwrite=True, progress=False)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_incompatible_format_is_refused(tmp_path, tiny_data):
    run = tmp_path / "run"
    train_and_evaluate(tiny_config(epochs=1), run, data=tiny_data, progress=False)
    info = json.loads((run / "run.json").read_text())
    info["format"] = 99
    (run / "run.json").write_text(json.dumps(info))
    message = f"run-directory format 99; this rnnlab .* reads format 1 and {FORMAT}"
    with pytest.raises(RunDirError, match=message):
        train_and_evaluate(tiny_config(), run, data=tiny_data, resume=True, progress=False)
    with pytest.raises(RunDirError, match=message):
        predict(run, ["good film"])
    info["format"] = FORMAT
    (run / "run.json").write_text(json.dumps(info))
    (run / "tokenizer.json").write_text('{"type": "Tokenizer", "version": "words-0", "lower": true}')
    with pytest.raises(RunDirError, match=r"cannot use its vocabulary/tokenizer: .*version 'words-0'"):
        evaluate_run(run, data=tiny_data)


def test_checkpoint_not_matching_the_config(tmp_path, tiny_data):
    run = tmp_path / "run"
    train_and_evaluate(tiny_config(epochs=1), run, data=tiny_data, progress=False)
    text = (run / "config.toml").read_text().replace("hidden_size = 16", "hidden_size = 24")
    (run / "config.toml").write_text(text)
    with pytest.raises(
        RunDirError,
        match=r"last.pt does not match the model built from the config: shape "
        r"mismatch lstm.weight_ih_l0: checkpoint \(64, 16\) vs model \(96, 16\)",
    ):
        predict(run, ["good film"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data):
    run = tmp_path / "run"
    calls = {"n": 0}

    def nan_on_step_5_of_epoch_2(cfg):
        crit = torch.nn.CrossEntropyLoss()

        def loss(out, y):
            calls["n"] += torch.is_grad_enabled()  # training steps only, not evaluation batches
            value = crit(out, y)
            return value * float("nan") if calls["n"] == 8 + 5 else value

        return loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_criterion", nan_on_step_5_of_epoch_2)
        with pytest.raises(
            TrainingError,
            match=r"non-finite training loss \(nan\) at epoch 2, step 5 of 8; "
            r"stopped before updating the weights. The last good "
            r"checkpoint \(epoch 1\) is kept",
        ):
            train_and_evaluate(tiny_config(epochs=3), run, data=tiny_data, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "epoch 2, step 5" in info["error"]
    assert info["epochs_completed"] == 1 and len(read_metrics(run)) == 1
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert len(predict(run, ["good"])) == 1  # the kept checkpoint is usable


def test_validation_best_checkpoint_and_early_stopping(tmp_path, tiny_val_data, capsys):
    config = tiny_config(epochs=8, val_fraction=0.2, early_stopping=1)
    rows = train_and_evaluate(config, tmp_path / "run", data=tiny_val_data, progress=False)
    assert all({"val_loss", "val_acc"} <= set(r) for r in rows)
    best = max(rows, key=lambda r: r["val_acc"])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["best_metric"] == "val_acc" and info["best_epoch"] == best["epoch"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["epoch"] == best["epoch"]
    # Early stopping: training ended one epoch after the last improvement (patience 1).
    first_best = next(r["epoch"] for r in rows if r["val_acc"] == best["val_acc"])
    assert len(rows) == first_best + 1 < 8 and info["stopped_early"] is True
    assert "Early stopping: validation accuracy has not improved for 1 epochs" in capsys.readouterr().out
    out = (tmp_path / "run" / "train.log").read_text()
    assert re.search(r"^Validation set: Average loss: \d\.\d{4}, Accuracy: \d\.\d{4}$", out, re.M)
    result = evaluate_run(tmp_path / "run", data=tiny_val_data)
    assert result["epoch"] == best["epoch"] and result["checkpoint"].endswith("best.pt")
    assert result["accuracy"] == pytest.approx(best["test_acc"], abs=1e-12)


def test_test_split_evaluated_once_on_the_best_validation_checkpoint(tmp_path, tiny_val_data, monkeypatch):
    config = tiny_config(epochs=4, val_fraction=0.2, test_every_epoch=False)
    calls = []
    real_eval = runner.run_eval
    monkeypatch.setattr(
        runner,
        "run_eval",
        lambda model, split, *a, **k: (calls.append(split is tiny_val_data.test), real_eval(model, split, *a, **k))[1],
    )
    rows = train_and_evaluate(config, tmp_path / "run", data=tiny_val_data, progress=False)
    assert calls.count(True) == 1 and calls[-1] is True  # test once, after the last epoch
    assert all("test_acc" not in r and "val_acc" in r for r in rows)
    best = max(rows, key=lambda r: r["val_acc"])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    test = json.loads((tmp_path / "run" / "test.json").read_text())
    assert info["status"] == "complete" and info["test"] == test and test["epoch"] == best["epoch"]
    assert test["selected_by"] == "val_acc" and test["n"] == len(tiny_val_data.test)
    result = evaluate_run(tmp_path / "run", data=tiny_val_data)  # best.pt re-evaluated: the same number
    assert result["epoch"] == best["epoch"] and result["accuracy"] == pytest.approx(test["acc"], abs=1e-12)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"Test set (epoch {best['epoch']}, best validation accuracy)" in log and "\nTest set: " not in log
    # Killed after training but before the test pass: resume runs only the test pass.
    del info["test"]
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    (tmp_path / "run" / "test.json").unlink()
    calls.clear()
    train_and_evaluate(config, tmp_path / "run", data=tiny_val_data, resume=True, progress=False)
    assert calls == [True]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["test"] == test


def test_test_once_needs_a_validation_split():
    with pytest.raises(ConfigError, match=r"test_every_epoch=false .* needs val_fraction > 0"):
        tiny_config(test_every_epoch=False)


def test_evaluate_and_predict_from_the_run_directory_alone(tmp_path, tiny_data):
    run = tmp_path / "run"
    rows = train_and_evaluate(tiny_config(epochs=4, loss="nll"), run, data=tiny_data, progress=False)
    result = evaluate_run(run, data=tiny_data)
    assert result["accuracy"] == pytest.approx(rows[-1]["test_acc"], abs=1e-12)
    assert result["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-9)
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.sum() == len(tiny_data.test) and cm.trace() / cm.sum() == pytest.approx(result["accuracy"])
    pos = result["per_class"]["pos"]
    assert pos["precision"] == pytest.approx(cm[1, 1] / cm[:, 1].sum())
    assert pos["recall"] == pytest.approx(cm[1, 1] / cm[1, :].sum())
    # predict needs only the run directory: the data is not passed.
    out = predict(run, ["a great and brilliant film", "an awful , boring and dull movie"])
    assert [o["label"] for o in out] == ["pos", "neg"]
    for o in out:
        assert o["probability"] == max(o["probabilities"].values()) > 0.5
        assert sum(o["probabilities"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"text 2 \('  !! '\) is empty: it has no words to classify"):
        predict(run, ["good", "  !! "])


def test_lr_schedules():
    def f(step, schedule, warmup=0):
        return runner.lr_factor(step, schedule=schedule, warmup_steps=warmup, total_steps=100, steps_per_epoch=10)

    assert [f(s, "none", warmup=4) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert f(0, "cosine") == 1.0 and f(50, "cosine") == pytest.approx(0.5) and f(100, "cosine") == 0.0
    assert f(25, "linear") == 0.75 and f(10, "linear", warmup=10) == 1.0 and f(55, "linear", warmup=10) == 0.5
    assert [f(s, "step") for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_validation_asked_but_missing_from_the_data(tmp_path, tiny_data):
    with pytest.raises(
        runner.ConfigError,
        match=r"val_fraction=0.2 asks for a validation split, but the data "
        r"given has none",
    ):
        train_and_evaluate(tiny_config(val_fraction=0.2), tmp_path / "run", data=tiny_data, progress=False)
    assert not (tmp_path / "run").exists()


def test_tensorboard_scalars_when_installed(tmp_path, tiny_data, monkeypatch):
    import sys
    import types

    written = []

    class FakeWriter:
        def __init__(self, logdir):
            written.append(("logdir", logdir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    rows = train_and_evaluate(tiny_config(), tmp_path / "run", data=tiny_data, progress=False)
    assert written[0] == ("logdir", str(tmp_path / "run" / "tensorboard")) and written[-1] == ("closed",)
    assert ("test_acc", rows[1]["test_acc"], 2) in written and ("train_loss", rows[0]["train_loss"], 1) in written


@pytest.mark.filterwarnings("ignore::rnnlab.nn.options.OptionFallbackWarning")
def test_training_with_layer_options(tmp_path, tiny_data):
    """The rnnlab.nn cell options from the config: written to config.toml and model.txt, the
    loss decreases, and the same seed gives the same metrics (masks from the seeded generator)."""
    config = tiny_config(layer_norm=True, recurrent_dropout=0.2, zoneout=0.1, weight_drop=0.3, peephole=True)
    a = train_and_evaluate(config, tmp_path / "a", data=tiny_data, progress=False)
    b = train_and_evaluate(config, tmp_path / "b", data=tiny_data, progress=False)
    assert _values(a) == _values(b)
    assert a[1]["train_loss"] < a[0]["train_loss"]
    text = (tmp_path / "a" / "config.toml").read_text()
    assert "layer_norm = true\n" in text and "weight_drop = 0.3\n" in text and "peephole = true\n" in text
    model_txt = (tmp_path / "a" / "model.txt").read_text()
    assert (
        "LSTM(16, 16, layer_norm=True, recurrent_dropout=0.2, zoneout=0.1, weight_drop=0.3, peephole=True)" in model_txt
    )
