"""One epoch of the default LSTM on the real IMDB data (skipped when the archive is absent)."""

from __future__ import annotations

import json

import pytest
import torch

from rnnlab.train import Config, predict, train_and_evaluate


def _fastest_impl() -> str:
    """``rnnlab`` once a fast CPU kernel for the LSTM exists, else torch.nn (fastest today)."""
    from rnnlab.kernels import layer_function

    fast = layer_function("lstm", torch.device("cpu"), torch.float32, has_lengths=True, has_proj=False,
                          training=True)
    return "rnnlab" if fast is not None else "torch"


@pytest.mark.slow
def test_one_epoch_default_lstm_beats_75_percent(imdb_archive, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))
    config = Config(epochs=1, impl=_fastest_impl(), data=str(imdb_archive))
    rows = train_and_evaluate(config, tmp_path / "run", progress=False)
    assert len(rows) == 1 and rows[0]["test_acc"] > 0.75, rows
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["status"], info["num_params"], info["vocab_size"]) == ("complete", 1_317_634, 20001)
    out = predict(tmp_path / "run", ["One of the best films I have seen: moving, funny and beautifully acted.",
                                     "A boring, stupid waste of time. The worst movie of the year."])
    assert [o["label"] for o in out] == ["pos", "neg"]
