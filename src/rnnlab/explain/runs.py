"""The explain package's one door into run directories: open a finished recurrent run, list its
per-epoch checkpoints, load one, and give the model in rnnlab.nn form.

Everything that knows a run directory's files goes through ``rnnlab.train`` (``load_run``,
``load_config``-level readers); the two readers of this module (:func:`epoch_checkpoints`,
:func:`load_checkpoint_weights`) are the ones to point at the run-directory API when it owns
the per-epoch checkpoint files.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlab.models import RNNClassifier, build_model
from rnnlab.train import RunDirError, load_run
from rnnlab.train.evaluate import LoadedRun
from rnnlab.train.runner import data_source, read_run_info

#: Per-epoch checkpoint files: ``checkpoints/epoch_{k}.pt`` (k = 0: the initial weights).
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")
#: Largest |logit difference| accepted between a torch.nn run and its rnnlab.nn copy.
PARITY_TOL = 1e-4


class ExplainError(ValueError):
    """Input that cannot be explained: says what was expected and what was found."""


@dataclass
class ExplainedRun:
    """A finished run, ready to explain: ``model`` is the rnnlab.nn form of the trained model
    (a copy with the same weights for ``impl = "torch"`` runs), in eval mode on the CPU."""

    run: LoadedRun
    model: RNNClassifier

    @property
    def config(self) -> Any:
        return self.run.config


def open_run(run_dir: str | os.PathLike, *, checkpoint: str = "auto") -> ExplainedRun:
    """Load a complete recurrent run for explaining (CPU, eval mode).

    Refuses, with ``ExplainError``: a path that is not a run directory, a bag-of-words baseline,
    and a run whose training has not finished (status other than ``complete``).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ExplainError(f"{path} is not a run directory: no such folder")
    try:
        info = read_run_info(path)
    except RunDirError as err:
        raise ExplainError(str(err)) from None
    if info.get("kind") == "baseline":
        raise ExplainError(
            f"{path} is a bag-of-words baseline ({info.get('name')}), not a recurrent run: nothing to explain"
        )
    if info.get("status") != "complete":
        raise ExplainError(
            f"{path} is not a finished run: status {info.get('status')!r} with "
            f"{info.get('epochs_completed')} of {info.get('epochs')} epochs; finish it first (rnnlab train --resume)"
        )
    if checkpoint not in ("auto", "best", "last"):
        raise ExplainError(f"checkpoint must be auto, best or last; got {checkpoint!r}")
    try:
        run = load_run(path, checkpoint=checkpoint, device="cpu")
    except RunDirError as err:
        raise ExplainError(str(err)) from None
    return ExplainedRun(run, rnnlab_model(run.model, run.config))


def rnnlab_model(model: RNNClassifier, config: Any) -> RNNClassifier:
    """``model`` with its encoder as a fast rnnlab.nn layer: itself (``impl = "rnnlab"``), or a
    copy built with ``impl = "rnnlab"`` holding the same weights (``"torch"``, ``"reference"``:
    the parameter names are shared, the numbers equal)."""
    if config.impl == "rnnlab":
        return model
    copy = build_model(
        dataclasses.replace(config, impl="rnnlab"), model.embedding.num_embeddings, model.linear2.out_features
    )
    copy.load_state_dict(model.state_dict(), strict=True)
    return copy.eval()


def check_parity(original: RNNClassifier, copy: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> float:
    """Largest |logit difference| of the two models on a batch; ``ExplainError`` above PARITY_TOL."""
    with torch.no_grad():
        diff = float((original(ids, lengths) - copy(ids, lengths)).abs().max())
    if diff > PARITY_TOL:
        raise ExplainError(f"the rnnlab.nn copy of the run's model differs by {diff:.3g} in a logit (> {PARITY_TOL})")
    return diff


def epoch_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(epoch, path)]`` of the run's per-epoch checkpoints ``checkpoints/epoch_{k}.pt``, by epoch."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for p in folder.glob("epoch_*.pt") if folder.is_dir() else ():
        m = _EPOCH_FILE.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_checkpoint_weights(model: RNNClassifier, path: Path) -> None:
    """Load the model weights of a checkpoint file into ``model`` (same architecture)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"], strict=True)
    except (OSError, RuntimeError, KeyError, TypeError) as err:
        raise ExplainError(f"{path}: cannot load its model weights ({type(err).__name__}: {err})") from None


def load_test_texts(run: ExplainedRun, data: str | None = None) -> tuple[list[str], list[int]]:
    """The test split's texts and labels of ``data`` (default: the run's data source)."""
    from rnnlab.data import load_dataset

    config = run.config
    source = data or data_source(config)
    dataset = load_dataset(source, val_fraction=config.val_fraction, val_split=config.val_split, seed=0, progress=False)
    return list(dataset.test.texts), list(dataset.test.labels)
