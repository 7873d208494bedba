"""Tiny trained runs for the explain tests: a generated CSV sentiment dataset, seconds per run."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from rnnlab.train import Config, train_and_evaluate

POSITIVE = ["good", "great", "fine", "superb", "lovely", "fun", "moving", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "weak", "ugly", "terrible"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "scene", "it", "was", "and", "very", "story"]


def write_csv(path: Path, n: int = 240, seed: int = 1) -> Path:
    """n reviews of 3 to 24 filler words with 1 to 3 sentiment words of their label (labels alternate)."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 24))]
            for _ in range(rng.randint(1, 3)):
                words[rng.randrange(len(words))] = rng.choice(POSITIVE if label else NEGATIVE)
            w.writerow([" ".join(words), ["neg", "pos"][label]])
    return path


def tiny_config(data: Path, **changes) -> Config:
    base = dict(
        name="tiny",
        encoder="rnnlab",
        embedding_dim=12,
        hidden_size=10,
        batch_size=32,
        eval_batch_size=64,
        epochs=2,
        lr=0.05,
        max_words=100,
        max_len=20,
        device="cpu",
        num_threads=1,
        data=str(data),
    )
    base.update(changes)
    return Config(**base)


def train_run(root: Path, data: Path, **changes) -> Path:
    name = "_".join(f"{k}-{v}" for k, v in sorted(changes.items())) or "default"
    run_dir = root / name
    if not (run_dir / "run.json").exists():
        train_and_evaluate(tiny_config(data, **changes), run_dir, progress=False)
    return run_dir
