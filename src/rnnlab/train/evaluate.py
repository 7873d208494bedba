"""Use a trained run directory: ``evaluate_run`` (metrics on a labelled split) and ``predict`` (raw text).

Everything comes from the run directory alone: the config (model and encoding settings),
``vocab.json`` and ``tokenizer.json`` (so text maps to ids exactly as in training) and a
checkpoint. ``checkpoint="auto"`` takes ``best.pt`` when the run had a validation split (it
was chosen on validation) and ``last.pt`` otherwise (choosing on test would flatter it).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from rnnlab.errors import DataError, RunDirError
from rnnlab.models import RNNClassifier, build_model
from rnnlab.rundir import RunDir
from rnnlab.train.config import Config, config_from_toml
from rnnlab.train.runner import load_model_state, run_eval, select_device


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
    check_texts(enumerate(texts, 1), tokenizer)
    return encode(texts, tokenizer, vocab, max_len=config.max_len, truncate=config.truncate)


def check_texts(
    texts: Iterable[tuple[int, Any]], tokenizer: Any, where: Callable[[int], str] = "text {}".format
) -> int:
    """Check ``(number, text)`` pairs: each a string with at least one word; returns how many.

    A bad text raises TypeError / ValueError naming it as ``where(number)`` (``text 2``,
    ``reviews.txt:7``).
    """
    n = 0
    for number, text in texts:
        if not isinstance(text, str):
            raise TypeError(f"{where(number)} must be a string, got {type(text).__name__}")
        if not tokenizer.tokenize(text):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise DataError(f"{where(number)} ({shown!r}) is empty: it has no words to classify")
        n += 1
    return n


@torch.no_grad()
def classify(run: LoadedRun, texts: Sequence[str]) -> list[dict[str, Any]]:
    """One batch of checked texts (see ``check_texts``) -> one result dict per text (see ``predict``).

    The batch is encoded with the run's tokenizer, vocabulary, ``max_len`` and ``truncate``,
    padded to its longest text: ``ids (N, L)``, ``lengths (N,)`` -> probabilities ``(N, C)``
    (softmax of the logits; exp of the log-probabilities for ``loss = "nll"``).
    """
    from rnnlab.data import encode_texts as encode

    ids, lengths = encode(texts, run.tokenizer, run.vocab, max_len=run.config.max_len, truncate=run.config.truncate)
    out = run.model(ids[:, : int(lengths.max())].to(run.device), lengths)
    probs = (out.exp() if run.config.loss == "nll" else out.softmax(-1)).double().cpu()  # (N, C)
    results = []
    for text, p in zip(texts, probs):
        k = int(p.argmax())
        results.append(
            {
                "text": text,
                "label": run.label_names[k],
                "label_id": k,
                "probability": float(p[k]),
                "probabilities": {name: float(p[c]) for c, name in enumerate(run.label_names)},
            }
        )
    return results


def iter_predictions(
    run: LoadedRun,
    texts: Callable[[], Iterable[tuple[int, str]]],
    *,
    where: Callable[[int], str] = "text {}".format,
    batch_size: int = 256,
    progress: bool = False,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(number, result)`` for every text of ``texts()``, a function that returns a fresh iterable
    of ``(number, text)`` pairs. It is called twice: now, to check every text (a bad one raises
    here, naming it as ``where(number)``, before any result), then lazily, to classify them
    ``batch_size`` at a time. ``progress`` draws a bar on stderr. Memory: one batch, whatever
    the number of texts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = check_texts(texts(), run.tokenizer, where)
    if total == 0:
        raise DataError("no texts given")
    return _classify_batches(run, texts(), total, batch_size, progress)


def _classify_batches(
    run: LoadedRun, texts: Iterable[tuple[int, str]], total: int, batch_size: int, progress: bool
) -> Iterator[tuple[int, dict[str, Any]]]:
    from tqdm import tqdm

    with tqdm(total=total, desc="predicting", unit=" texts", disable=not progress, file=sys.stderr) as bar:
        for batch in _batches(texts, batch_size):
            numbers, chunk = zip(*batch)
            yield from zip(numbers, classify(run, list(chunk)))
            bar.update(len(batch))


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    return [r for _, r in iter_predictions(run, lambda: enumerate(texts, 1), batch_size=batch_size)]


#: Output formats of ``write_predictions``.
PREDICTION_FORMATS = ("table", "json", "jsonl", "csv")


def write_predictions(
    rows: Iterable[tuple[int, dict[str, Any]]],
    out: TextIO,
    fmt: str,
    label_names: Sequence[str],
    *,
    line_numbers: bool = False,
) -> int:
    """Write ``(number, result)`` rows to ``out`` as they come; returns how many.

    table: ``label<TAB>probability<TAB>text`` (the text on one line, cut at 70 characters);
    json: one array of result dicts; jsonl: one result dict a line; csv: a header, then
    ``label, probability, p_<name> for each label, text``. ``line_numbers`` adds the input line
    (the ``line`` key / first CSV column): joins the results back to a file's rows.
    """
    if fmt not in PREDICTION_FORMATS:
        raise ValueError(f"format must be one of {', '.join(PREDICTION_FORMATS)}; got {fmt!r}")
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        names = [f"p_{name}" for name in label_names]
        writer.writerow(["line"] * line_numbers + ["label", "probability", *names, "text"])
    n = 0
    for number, r in rows:
        row = {"line": number, **r} if line_numbers else r
        if fmt == "table":
            text = " ".join(r["text"].split())
            out.write(f"{r['label']}\t{r['probability']:.4f}\t{text if len(text) <= 70 else text[:67] + '...'}\n")
        elif fmt == "jsonl":
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif fmt == "json":
            text = json.dumps(row, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            out.write(("[\n  " if n == 0 else ",\n  ") + text)
        else:
            probs = [repr(r["probabilities"][name]) for name in label_names]
            writer.writerow([number] * line_numbers + [r["label"], repr(r["probability"]), *probs, r["text"]])
        n += 1
    if fmt == "json":
        out.write("\n]\n" if n else "[]\n")
    return n


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
    test_path: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's model on the test split.

    data: an encoded dataset whose vocabulary equals the run's, or None: the test split that the
    run's data keys make (``rnnlab.train.dataset``), encoded with the run's own tokenizer and
    vocabulary. ``data_path`` replaces the run's ``data`` (its test split is then held out with the
    run's columns and ``test_fraction``, unless ``test_path`` is given); ``test_path`` replaces
    the run's ``test_data``. Returns ``loss``, ``accuracy``, ``n``, ``epoch``,
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
        split = _encode_test_split(_data_config(config, data_path, test_path), run, progress)
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


def _data_config(config: Config, data_path: str | None, test_path: str | None) -> Config:
    """The run's config with ``data`` / ``test_data`` replaced: another data path drops the run's test file."""
    changes: dict[str, Any] = {}
    if data_path:
        changes.update(data=str(data_path), test_data="")
    if test_path:
        changes.update(test_data=str(test_path), test_fraction=Config().test_fraction)
    return config.replace(**changes) if changes else config


def _encode_test_split(config: Config, run: LoadedRun, progress: bool) -> Any:
    """The test texts of the config's data, encoded with the run's tokenizer and vocabulary."""
    from rnnlab.data import EncodedSplit, encode_texts
    from rnnlab.train.dataset import load_texts

    dataset = load_texts(config, progress=progress)
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
