"""Use a trained run directory: ``evaluate_run`` (metrics on a labelled split) and ``predict`` (raw text).

Everything comes from the run directory alone: the config (model and encoding settings),
``vocab.json`` and ``tokenizer.json`` (so text maps to ids exactly as in training) and a
checkpoint. ``checkpoint="auto"`` takes ``best.pt`` when the run had a validation split (it
was chosen on validation) and ``last.pt`` otherwise (choosing on test would flatter it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlab.errors import DataError, RunDirError
from rnnlab.models import RNNClassifier, build_model
from rnnlab.rundir import RunDir
from rnnlab.train.config import Config, config_from_toml
from rnnlab.train.runner import data_source, load_model_state, run_eval, select_device


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    model: RNNClassifier
    tokenizer: Any
    vocab: Any
    label_names: list[str]
    checkpoint: Path
    epoch: int
    device: torch.device


def load_run(run_dir: str | os.PathLike, *, checkpoint: str | int = "auto", device: str | None = None) -> LoadedRun:
    """Rebuild the trained model, tokenizer and vocabulary of a run directory (in eval mode).

    checkpoint: ``auto`` (best.pt when the run chose its best epoch on validation, else last.pt),
    ``best``, ``last``, or an epoch ``K`` / ``"epoch_K"`` (``checkpoints/epoch_K.pt``, kept with
    ``keep_epoch_checkpoints``; 0 = the weights at initialisation).
    """
    from rnnlab.data import Tokenizer, Vocabulary

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise RunDirError(f"run directory not found: {rd.path}")
    info = rd.read_info()
    config = config_from_toml(rd.config_path)
    if checkpoint == "auto":
        checkpoint = "best" if info.get("best_metric") == "val_acc" else "last"
    path = rd.checkpoint_path(checkpoint)
    if not path.exists():
        have = ", ".join(f"epoch_{k}" for k in rd.epoch_checkpoints()) or "none"
        raise RunDirError(
            f"{path} not found: the run has no such checkpoint (status {info.get('status')!r}, "
            f"{info.get('epochs_completed')} epochs completed; epoch checkpoints: {have})"
        )
    ckpt = rd.load_checkpoint(path)
    for name in (rd.VOCAB, rd.TOKENIZER):
        if not (rd.path / name).exists():
            raise RunDirError(f"{rd.path / name} not found: the run directory is incomplete")
    try:
        vocab = Vocabulary.load(rd.vocab_path)
        tokenizer = Tokenizer.from_dict(rd.read_tokenizer())
    except (ValueError, KeyError, TypeError) as err:  # another version's files, or damaged ones
        raise RunDirError(f"{rd.path}: cannot use its vocabulary/tokenizer: {err}") from None
    label_names = list(ckpt.get("label_names") or info.get("label_names") or [])
    if len(vocab) != ckpt.get("vocab_size"):
        raise RunDirError(f"{rd.vocab_path} has {len(vocab)} ids but {path} was trained with {ckpt.get('vocab_size')}")
    # Inference keeps the architecture but may use any implementation: the weights are interchangeable.
    dev = select_device(device or "auto")  # not config.device: the run may come from another machine
    model = build_model(config, len(vocab), len(label_names))
    load_model_state(model, ckpt["model"], path)
    model.to(dev).eval()
    return LoadedRun(rd.path, config, model, tokenizer, vocab, label_names, path, int(ckpt["epoch"]), dev)


def encode_texts(texts: Sequence[str], tokenizer: Any, vocab: Any, config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> ``ids (N, L)`` right-padded with 0 and ``lengths (N,)``, exactly as in training.

    Keeps the first (``truncate="head"``) or last (``"tail"``) ``max_len`` tokens. A text
    without any word raises DataError, a ValueError (there is nothing to classify).
    """
    from rnnlab.data import encode_texts as encode

    texts = list(texts)
    if not texts:
        raise DataError("no texts given")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i + 1} must be a string, got {type(text).__name__}")
        if not tokenizer.tokenize(text):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise DataError(f"text {i + 1} ({shown!r}) is empty: it has no words to classify")
    return encode(texts, tokenizer, vocab, max_len=config.max_len, truncate=config.truncate)


@torch.no_grad()
def predict(
    run_dir: str | os.PathLike | LoadedRun,
    texts: Sequence[str],
    *,
    checkpoint: str | int = "auto",
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Classify raw texts with a trained run: one dict per text.

    Each dict: ``text``, ``label`` (name), ``label_id``, ``probability`` (of that label) and
    ``probabilities`` (name -> probability). An empty text raises DataError (a ValueError).
    """
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir, checkpoint=checkpoint)
    texts = list(texts)
    ids, lengths = encode_texts(texts, run.tokenizer, run.vocab, run.config)
    results = []
    for start in range(0, len(texts), batch_size):
        b_ids, b_len = ids[start : start + batch_size], lengths[start : start + batch_size]
        b_ids = b_ids[:, : int(b_len.max())].to(run.device)
        out = run.model(b_ids, b_len)
        probs = (out.exp() if run.config.loss == "nll" else out.softmax(-1)).double().cpu()
        for j, p in enumerate(probs):
            k = int(p.argmax())
            results.append(
                {
                    "text": texts[start + j],
                    "label": run.label_names[k],
                    "label_id": k,
                    "probability": float(p[k]),
                    "probabilities": {name: float(p[c]) for c, name in enumerate(run.label_names)},
                }
            )
    return results


def classification_report(labels: torch.Tensor, preds: torch.Tensor, label_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, and the confusion matrix ``[true][predicted]``.

    precision_c = TP / (TP + FP), recall_c = TP / (TP + FN), F1 = 2PR / (P + R) (0 when undefined).
    """
    c = len(label_names)
    cm = torch.zeros(c, c, dtype=torch.int64)
    cm.index_put_((labels.long(), preds.long()), torch.ones_like(labels, dtype=torch.int64), accumulate=True)
    per_class = {}
    for k, name in enumerate(label_names):
        tp = int(cm[k, k])
        fp = int(cm[:, k].sum()) - tp
        fn = int(cm[k, :].sum()) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return {"per_class": per_class, "confusion_matrix": cm.tolist()}


def evaluate_run(
    run_dir: str | os.PathLike,
    data: Any = None,
    *,
    checkpoint: str | int = "auto",
    data_path: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's model on the test split.

    data: an encoded dataset whose vocabulary equals the run's, or None: the test texts of
    ``data_path`` (default: the run's ``config.data`` / ``$RNNLAB_DATA``) are encoded with
    the run's own tokenizer and vocabulary. Returns ``loss``, ``accuracy``, ``n``, ``epoch``,
    ``checkpoint``, ``label_names``, ``per_class`` {name: precision, recall, f1, support} and
    ``confusion_matrix`` (rows: true label, columns: predicted).
    """
    run = load_run(run_dir, checkpoint=checkpoint)
    config = run.config
    if data is not None:
        if len(data.vocab) != len(run.vocab) or data.vocab != run.vocab:
            raise RunDirError(
                f"the given data's vocabulary ({len(data.vocab)} ids) is not the run's vocab.json "
                f"({len(run.vocab)} ids); pass data=None to encode the test texts with the run's"
            )
        split = data.test
    else:
        split = _encode_test_split(config, run, data_path, progress)
    result = run_eval(run.model, split, config, run.device)
    report = classification_report(result["labels"], result["preds"], run.label_names)
    return {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "epoch": run.epoch,
        "loss": result["loss"],
        "accuracy": result["acc"],
        "n": result["n"],
        "label_names": run.label_names,
        **report,
    }


def _encode_test_split(config: Config, run: LoadedRun, data_path: str | None, progress: bool) -> Any:
    """The test texts of ``data_path`` (or the run's data), encoded with the run's tokenizer and vocabulary."""
    from rnnlab.data import EncodedSplit, encode_texts, load_dataset

    dataset = load_dataset(data_path or data_source(config), progress=progress)
    if list(dataset.label_names) != run.label_names:
        raise RunDirError(f"the data's labels {list(dataset.label_names)} are not the run's {run.label_names}")
    ids, lengths = encode_texts(
        dataset.test.texts, run.tokenizer, run.vocab, max_len=config.max_len, truncate=config.truncate
    )
    return EncodedSplit(ids, lengths, torch.as_tensor(dataset.test.labels, dtype=torch.int64))


def format_evaluation(result: dict[str, Any]) -> str:
    """Human-readable evaluation: loss, accuracy, per-class P/R/F1, confusion matrix."""
    names = result["label_names"]
    width = max(9, *(len(n) for n in names))
    lines = [
        f"Run: {result['run_dir']} (checkpoint {Path(result['checkpoint']).name}, epoch {result['epoch']})",
        f"Test set: Average loss: {result['loss']:.4f}, Accuracy: {result['accuracy']:.4f} ({result['n']} examples)",
        "",
        f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}",
    ]
    for name in names:
        m = result["per_class"][name]
        lines.append(f"{name:<{width}} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {m['support']:>9d}")
    lines += [
        "",
        "Confusion matrix (rows: true, columns: predicted):",
        " " * width + " " + " ".join(f"{n:>9}" for n in names),
    ]
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>9d}" for v in row))
    return "\n".join(lines)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)
