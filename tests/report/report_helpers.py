"""Hand-made run directories in the layout of ARCHITECTURE.md, with metrics chosen by the test."""

from __future__ import annotations

import json
from pathlib import Path


def make_run(
    root: Path,
    name: str,
    seed: int,
    test_accs: list[float],
    *,
    status: str = "complete",
    epochs: int | None = None,
    num_params: int = 1000,
    test_losses: list[float] | None = None,
    epoch_seconds: list[float] | None = None,
    config: dict | None = None,
) -> Path:
    """Write ``root/name/seed{seed}`` with one metrics row per entry of ``test_accs``."""
    run = root / name / f"seed{seed}"
    run.mkdir(parents=True)
    epochs = len(test_accs) if epochs is None else epochs
    cfg = {"name": name, "seed": seed, "epochs": epochs, "cell": "lstm", "lr": 0.001, **(config or {})}
    (run / "config.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items()), encoding="utf-8")
    (run / "run.json").write_text(
        json.dumps(
            {
                "rnnlab_version": "0.1.0",
                "format": 1,
                "status": status,
                "epochs_completed": len(test_accs),
                "epochs": epochs,
                "num_params": num_params,
                "name": name,
                "seed": seed,
                "device": "cpu",
            }
        )
    )
    losses = test_losses or [0.5 - 0.01 * i for i in range(len(test_accs))]
    seconds = epoch_seconds or [10.0] * len(test_accs)
    with open(run / "metrics.jsonl", "w") as f:
        for i, acc in enumerate(test_accs):
            f.write(
                json.dumps(
                    {
                        "epoch": i + 1,
                        "train_loss": 0.6 - 0.1 * i,
                        "train_acc": 0.7 + 0.05 * i,
                        "test_loss": losses[i],
                        "test_acc": acc,
                        "epoch_seconds": seconds[i],
                        "examples_per_second": 2500.0 / seconds[i],
                        "lr": 0.001,
                    }
                )
                + "\n"
            )
    return run


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
    (folder / "tiny_gru.toml").write_text('cell = "gru"\nimpl = "torch"\n')
    (folder / "tiny_rnn.toml").write_text('cell = "rnn"\nimpl = "rnnlab"\n')
    return folder / "suite.toml"
