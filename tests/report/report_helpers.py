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
