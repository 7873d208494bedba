"""The seed suite: the seven original experiments, each changing only what its experiment changes."""

from __future__ import annotations

from rnnlab.report.original import ORIGINAL_RESULTS
from rnnlab.train import Config, load_suite


def test_seed_suite_matches_the_original_experiments():
    configs = load_suite("seed")
    assert [c.name for c in configs] == list(ORIGINAL_RESULTS)
    default = Config()
    expected = {
        "lstm": dict(cell="lstm", encoder="torch"),
        "rnn": dict(cell="rnn", encoder="torch"),
        "gru": dict(cell="gru", encoder="torch"),
        "handwritten_lstm": dict(cell="lstm", encoder="rnnlab"),
        "handwritten_lstm_128": dict(cell="lstm", encoder="rnnlab", embedding_dim=128, hidden_size=128),
        "handwritten_lstm_nll": dict(cell="lstm", encoder="rnnlab", loss="nll"),
        "handwritten_lstm_b128_lr5e-3": dict(cell="lstm", encoder="rnnlab", batch_size=128, lr=5e-3),
    }
    for c in configs:
        # every seed preset: mean pooling and random-order batches (docs/RESULTS.md says why)
        assert c == default.replace(name=c.name, pooling="mean", bucket=False, **expected[c.name]), c.name
    assert (
        default.embedding_dim,
        default.hidden_size,
        default.batch_size,
        default.lr,
        default.epochs,
        default.optimizer,
        default.max_len,
        default.pooling,
    ) == (64, 64, 64, 1e-3, 5, "adam", 200, "last")


def test_original_numbers():
    assert ORIGINAL_RESULTS["lstm"].final == 0.8546
    assert (
        ORIGINAL_RESULTS["handwritten_lstm_b128_lr5e-3"].best,
        ORIGINAL_RESULTS["handwritten_lstm_b128_lr5e-3"].best_epoch,
    ) == (0.8715, 2)
    for r in ORIGINAL_RESULTS.values():
        assert r.best >= r.final
