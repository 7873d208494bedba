"""Tiny generated reviews and a two-experiment suite for comparison tests (seconds per run)."""

from __future__ import annotations

from pathlib import Path

GOOD = ["good", "great", "superb", "lovely", "fun", "moving"]
BAD = ["bad", "awful", "dull", "boring", "poor", "weak"]
NEUTRAL = ["the", "a", "film", "movie", "plot", "cast", "scene", "it", "was", "and", "quite", "story"]


def tiny_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    """n reviews of 4 to 20 neutral words with 1 or 2 sentiment words of their label (labels alternate)."""
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(4, 20))]
        for _ in range(rng.randint(1, 2)):
            words[rng.randrange(len(words))] = rng.choice(GOOD if i % 2 else BAD)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


def tiny_dataset(n_train: int = 192, n_test: int = 64):
    from rnnlab.data import TextDataset, TextSplit

    return TextDataset(
        TextSplit(*tiny_texts(n_train, 1)),
        TextSplit(*tiny_texts(n_test, 2)),
        ["neg", "pos"],
        "tiny-report",
        f"tiny-report-{n_train}-{n_test}",
    )


def write_suite(folder: Path) -> Path:
    """A suite of two tiny experiments (a torch GRU and a hand-written RNN), 2 epochs, seed 7."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.toml").write_text(
        'experiments = ["tiny_gru", "tiny_rnn"]\n[set]\nembedding_dim = 8\nhidden_size = 8\nbatch_size = 32\n'
        'eval_batch_size = 64\nepochs = 2\nlr = 0.05\nmax_words = 60\nmax_len = 16\ndevice = "cpu"\nseed = 7\n'
    )
    (folder / "tiny_gru.toml").write_text('cell = "gru"\nencoder = "torch"\n')
    (folder / "tiny_rnn.toml").write_text('cell = "rnn"\nencoder = "rnnlab"\n')
    return folder / "suite.toml"
