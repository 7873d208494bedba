"""Tiny generated sentiment data and a small config for training tests (seconds per run)."""

from __future__ import annotations

import random

from rnnlab.data import TextDataset, TextSplit
from rnnlab.train import Config

POSITIVE = ["good", "great", "fine", "superb", "lovely", "fun", "moving", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "weak", "ugly", "terrible"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and", "very", "story"]


def make_texts(n: int, seed: int) -> TextSplit:
    """Reviews of 3 to 24 filler words with 1 to 3 sentiment words of their label (alternating labels)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        length = rng.randint(3, 24)
        words = [rng.choice(FILLER) for _ in range(length)]
        k = rng.randint(1, 3)
        for _ in range(k):
            words[rng.randrange(length)] = rng.choice(POSITIVE if label else NEGATIVE)
        texts.append(" ".join(words))
        labels.append(label)
    return TextSplit(texts, labels)


def make_dataset(n_train: int = 256, n_test: int = 96, n_val: int = 0) -> TextDataset:
    val = make_texts(n_val, 3) if n_val else None
    return TextDataset(
        make_texts(n_train, 1),
        make_texts(n_test, 2),
        ["neg", "pos"],
        "tiny-generated",
        f"tiny-{n_train}-{n_test}-{n_val}",
        val=val,
    )


def tiny_config(**changes) -> Config:
    """A small fast model; every test changes only what it tests."""
    base = dict(
        name="tiny",
        encoder="rnnlab",
        embedding_dim=16,
        hidden_size=16,
        batch_size=32,
        eval_batch_size=64,
        epochs=2,
        lr=0.05,
        max_words=100,
        max_len=20,
        device="cpu",
    )
    base.update(changes)
    return Config(**base)
