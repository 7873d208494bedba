"""The explain package's door into run directories: open a finished recurrent run (or one of
its per-epoch checkpoints) and give the model in rnnlab.nn form.

Run directories are read only through their owners: ``rnnlab.rundir.RunDir`` (run.json, the
per-epoch checkpoints ``checkpoints/epoch_K.pt`` kept with ``keep_epoch_checkpoints``),
``rnnlab.train.load_run`` (a checkpoint's model, tokenizer and vocabulary) and
``rnnlab.train.dataset`` (the run's data and splits).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlab.errors import ExplainError, RunDirError
from rnnlab.models import RNNClassifier, build_model
from rnnlab.rundir import RunDir
from rnnlab.train import load_run
from rnnlab.train.dataset import load_texts
from rnnlab.train.evaluate import LoadedRun

__all__ = [
    "PARITY_TOL",
    "ExplainError",
    "ExplainedRun",
    "check_parity",
    "epochs_of",
    "load_test_texts",
    "open_run",
    "rnnlab_model",
]

#: Largest |logit difference| accepted between a torch.nn run and its rnnlab.nn copy.
PARITY_TOL = 1e-4


@dataclass
class ExplainedRun:
    """A finished run, ready to explain: ``model`` is the rnnlab.nn form of the trained model
    (a copy with the same weights for ``encoder = "torch"`` runs), in eval mode on the CPU."""

    run: LoadedRun
    model: RNNClassifier

    @property
    def config(self) -> Any:
        return self.run.config


def open_run(run_dir: str | os.PathLike, *, checkpoint: str | int = "auto") -> ExplainedRun:
    """Load a complete recurrent run for explaining (CPU, eval mode).

    checkpoint: ``auto``, ``best``, ``last`` or an epoch ``K`` / ``"epoch_K"`` (as
    ``rnnlab.train.load_run``). Refuses, with ``ExplainError``: a path that is not a run
    directory, a bag-of-words baseline, and a run whose training has not finished (status other
    than ``complete``); a missing or unreadable checkpoint with the ``RunDirError`` of ``load_run``.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ExplainError(f"{path} is not a run directory: no such folder")
    try:
        info = RunDir(path).read_info()
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
    try:
        run = load_run(path, checkpoint=checkpoint, device="cpu")
    except RunDirError as err:
        raise ExplainError(str(err)) from None
    return ExplainedRun(run, rnnlab_model(run.model, run.config))


def epochs_of(run: ExplainedRun) -> list[int]:
    """The epochs K whose weights the run kept (``checkpoints/epoch_K.pt``; 0: at initialisation)."""
    return RunDir(run.run.run_dir).epoch_checkpoints()


def rnnlab_model(model: RNNClassifier, config: Any) -> RNNClassifier:
    """``model`` with its encoder as a fast rnnlab.nn layer: itself (``encoder = "rnnlab"``), or a
    copy built with ``encoder = "rnnlab"`` holding the same weights (``"torch"``, ``"reference"``:
    the parameter names are shared, the numbers equal)."""
    if config.encoder == "rnnlab":
        return model
    copy = build_model(
        dataclasses.replace(config, encoder="rnnlab"), model.embedding.num_embeddings, model.linear2.out_features
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


def load_test_texts(run: ExplainedRun, data: str | None = None) -> tuple[list[str], list[int]]:
    """The test split's texts and labels of the run's data (``data``: another path in its place),
    split as in training (``rnnlab.train.dataset.load_texts``)."""
    config = run.config if data is None else dataclasses.replace(run.config, data=data)
    dataset = load_texts(config, progress=False)
    return list(dataset.test.texts), list(dataset.test.labels)
