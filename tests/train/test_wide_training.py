"""Training a wide-and-deep model: the n-gram table from the training split only, resume, loading, deep loss."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import tiny_config

import rnnlab.train.runner as runner
from rnnlab.models import build_model
from rnnlab.models.wide import ngram_statistics
from rnnlab.train import Config, ConfigError, evaluate_run, predict, train_and_evaluate

WIDE = dict(wide_ngrams=2, deep_loss_weight=1.0, val_fraction=0.1, test_every_epoch=False)


def _weights(run_dir, name="last"):
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]


def test_the_table_is_the_training_splits_ngrams(tmp_path, tiny_val_data):
    run = tmp_path / "run"
    rows = train_and_evaluate(tiny_config(**WIDE), run, data=tiny_val_data, progress=False)
    assert rows[-1]["val_acc"] > 0.9
    assert "(wide): WideNgrams(ngrams=2, features=" in (run / "model.txt").read_text()
    keys = _weights(run)["wide.keys"]
    n_vocab = len(tiny_val_data.vocab)
    train_keys, _ = ngram_statistics(tiny_val_data.train.ids, tiny_val_data.train.labels, 2, n_vocab, 2)
    assert torch.equal(keys, train_keys)
    others = set()
    for split in (tiny_val_data.val, tiny_val_data.test):
        k, _ = ngram_statistics(split.ids, split.labels, 2, n_vocab, 2)
        others |= set(k.tolist())
    unseen = others - set(train_keys.tolist())
    assert unseen and not unseen & set(keys.tolist())  # validation/test n-grams exist but never enter the table


def test_wide_run_resumes_exactly_and_loads_for_evaluation(tmp_path, tiny_val_data):
    full = train_and_evaluate(tiny_config(**WIDE), tmp_path / "full", data=tiny_val_data, progress=False)
    train_and_evaluate(tiny_config(**WIDE, epochs=1), tmp_path / "r", data=tiny_val_data, progress=False)
    resumed = train_and_evaluate(tiny_config(**WIDE), tmp_path / "r", data=tiny_val_data, resume=True, progress=False)
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] for r in full]
    a, b = _weights(tmp_path / "r"), _weights(tmp_path / "full")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a model built from the config alone (an empty table) loads the checkpoint
    test = json.loads((tmp_path / "full" / "test.json").read_text())
    result = evaluate_run(tmp_path / "full", data=tiny_val_data, checkpoint="best")
    assert result["accuracy"] == pytest.approx(test["acc"], abs=1e-12)
    out = predict(tmp_path / "full", ["a great and brilliant film", "an awful , boring and dull movie"])
    assert [o["label"] for o in out] == ["pos", "neg"]


def test_deep_loss_weight_adds_the_deep_logits_loss(tiny_val_data):
    config = tiny_config(**WIDE)
    torch.manual_seed(0)
    model = build_model(config, len(tiny_val_data.vocab), 2)
    model.fit_wide(tiny_val_data.train)
    ids, lengths, labels = (
        tiny_val_data.train.ids[:8].long(),
        tiny_val_data.train.lengths[:8],
        tiny_val_data.train.labels[:8],
    )
    crit = torch.nn.CrossEntropyLoss()
    model.train()  # training mode keeps the deep logits; the config has no dropout: the same logits every call
    total, value, _ = runner._batch_loss(
        model, crit, ids, lengths, labels, 8, 8, runner.distributed.Dist(), deep_weight=0.5
    )
    out = model(ids, lengths)
    expected = crit(out, labels) + 0.5 * crit(model.deep_logits, labels)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert value == pytest.approx(crit(out, labels).item(), rel=1e-6)


def test_wide_keys_are_checked():
    with pytest.raises(ConfigError, match=r"wide_min_count, deep_loss_weight set without a wide part"):
        Config(wide_min_count=2, deep_loss_weight=1.0)
    with pytest.raises(ConfigError, match=r"'wide_ngrams' must be 0 \(no wide part\) or 1..3"):
        Config(wide_ngrams=4)
    with pytest.raises(ConfigError, match=r"'wide_dropout' must be in \[0, 1\), got 1.0"):
        Config(wide_ngrams=1, wide_dropout=1.0)
    with pytest.raises(ConfigError, match=r"'wide_alpha' must be a finite number > 0, got 0.0"):
        Config(wide_ngrams=1, wide_alpha=0.0)


def test_wide_weights_get_their_own_optimizer_group(tiny_val_data):
    config = tiny_config(**WIDE, wide_lr=0.01, wide_weight_decay=0.1)
    model = build_model(config, len(tiny_val_data.vocab), 2)
    model.fit_wide(tiny_val_data.train)
    opt = runner.make_optimizer(config, model)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    assert opt.param_groups[1]["params"] == [model.wide.weight]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
