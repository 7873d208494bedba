"""The training loop: ``train_and_evaluate(config, run_dir)``, as named steps of a :class:`Trainer`.

    open the run directory (lock, create / resume / overwrite)     _open_run_dir
    restore from last.pt, or start fresh                            Trainer.restore / Trainer.start
    for each epoch: train one epoch                                 Trainer.train_one_epoch
                    evaluate (validation, test)                     Trainer.evaluate
                    commit the epoch to the run directory           Trainer.commit_epoch
                    stop early?                                     Trainer.stop_early
    test once on the best checkpoint (test_every_epoch = false)     Trainer.test_once
    mark the run complete (or failed / interrupted)                 Trainer.complete / Trainer.fail

The console lines, ``train.log`` and TensorBoard hang off the loop as callbacks
(:mod:`rnnlab.train.callbacks`). The files are :class:`rnnlab.rundir.RunDir`'s: it owns their
names, format, status and the order in which an epoch is committed.

Determinism: Python's, NumPy's and torch's generators are seeded with ``config.seed``
before the model is built; the loader's order is a function of (seed, epoch); the
checkpoint stores every generator's state, so a resumed run continues with exactly the
random numbers the uninterrupted run would have drawn (bit-identical on CPU).

Distributed (``torchrun --nproc_per_node=N -m rnnlab train``, :mod:`rnnlab.train.distributed`):
every rank runs ``train_and_evaluate`` on its slice of the same global batches, wrapped in
DistributedDataParallel; metrics are all-reduced; rank 0 alone locks, reads and writes the run
directory (the others receive its checkpoint and its errors by broadcast) and prints.
Checkpoints hold the plain module's state_dict, so any run resumes with any process count.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnlab.errors import ConfigError, RnnlabError, RunDirError, TrainingError
from rnnlab.models import build_model, count_parameters
from rnnlab.rundir import FORMAT, RunDir
from rnnlab.train import distributed
from rnnlab.train.callbacks import Callback, ConsoleLog, TensorBoardLog
from rnnlab.train.config import Config, config_from_toml

__all__ = [
    "FORMAT",
    "RESUME_MUTABLE",
    "ConfigError",
    "RunDirError",
    "TrainState",
    "Trainer",
    "TrainingError",
    "load_data",
    "load_model_state",
    "read_metrics",
    "run_eval",
    "select_device",
    "train_and_evaluate",
]
from rnnlab.train.dataset import load_key, load_texts

#: Config fields that may change when a run is resumed (they do not change the model or the data).
RESUME_MUTABLE = ("name", "epochs", "device", "num_threads", "data", "test_data", "early_stopping", "eval_batch_size")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``RUN_DIR/metrics.jsonl``, one per completed epoch ([] when none); see ``RunDir.read_metrics``."""
    return RunDir(run_dir).read_metrics()


# ----------------------------------------------------------------------------- setup


def select_device(spec: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; otherwise the torch device named (checked to exist)."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for, but CUDA is not available here (use device=auto or cpu)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {spec!r} asked for, but MPS is not available here (use device=auto or cpu)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_optimizer(config: Config, params: Iterator[nn.Parameter] | nn.Module) -> torch.optim.Optimizer:
    """adam / adamw (decoupled weight decay) / sgd (momentum 0.9).

    Given the model, a wide part's weight (``model.wide.weight``) is a group of its own with
    ``lr = wide_lr`` (0: ``lr``) and ``weight_decay = wide_weight_decay`` (Adam and SGD: an L2 term
    on the wide weights only; AdamW: decoupled decay).
    """
    if isinstance(params, nn.Module):
        params = param_groups(config, params)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of ``config.lr`` for optimizer step ``step`` (0-based).

    Linear warmup from ``1/warmup`` to 1 over ``warmup_steps``, then with ``p`` the fraction
    of the remaining steps done: ``none`` 1; ``cosine`` ``(1 + cos(pi p)) / 2``; ``linear``
    ``1 - p``; ``step`` ``0.5 ** epoch`` (halved after every epoch).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    if schedule == "step":
        return 0.5 ** (step // max(1, steps_per_epoch))
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0 - p


def param_groups(config: Config, model: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: everything, then (with a wide part) the wide weights apart."""
    wide = getattr(model, "wide", None)
    if wide is None:
        return [{"params": list(model.parameters())}]
    rest = [p for name, p in model.named_parameters() if not name.startswith("wide.")]
    return [
        {"params": rest},
        {"params": [wide.weight], "lr": config.wide_lr or config.lr, "weight_decay": config.wide_weight_decay},
    ]


# ----------------------------------------------------------------------------- data

_DATA_CACHE: dict[tuple, Any] = {}


def load_data(config: Config, *, progress: bool = True) -> Any:
    """``config.data`` (or ``$RNNLAB_DATA``, or the download) encoded with the config's settings.

    ``rnnlab.train.dataset.load_texts`` reads IMDB (archive, folder, download) or the user's own
    files (CSV/TSV/JSONL, one folder per label) with the config's data keys. The splits always use
    seed 0, so runs that differ only in ``seed`` see the same splits (and share one encoding).
    Kept in-process.
    """
    from rnnlab.data import encode_dataset

    key = (*load_key(config), config.max_words, config.min_freq, config.max_len, config.truncate)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    dataset = load_texts(config, progress=progress)
    data = encode_dataset(
        dataset,
        max_words=config.max_words,
        min_freq=config.min_freq,
        max_len=config.max_len,
        truncate=config.truncate,
        progress=progress,
    )
    _DATA_CACHE.clear()  # one dataset in memory at a time
    _DATA_CACHE[key] = data
    return data


def _num_batches(loader: Any, n: int, batch_size: int) -> int:
    try:
        return len(loader)
    except TypeError:
        return math.ceil(n / batch_size)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def run_eval(model: nn.Module, split: Any, config: Config, device: torch.device) -> dict[str, Any]:
    """Loss and accuracy over a whole split; also the predictions, labels and probabilities."""
    from rnnlab.data import make_loader

    model.eval()
    criterion = _criterion(config)
    loss_sum, n = 0.0, 0
    preds, labels_all, probs = [], [], []
    # Sorted by length (bucket): least padding; the order does not change any prediction.
    loader = make_loader(split, config.eval_batch_size, shuffle=False, seed=config.seed, bucket=True)
    for ids, lengths, labels in loader:
        ids, labels = ids.to(device), labels.to(device)
        out = model(ids, lengths)
        loss_sum += float(criterion(out, labels).item()) * labels.shape[0]
        n += labels.shape[0]
        p = out.exp() if config.loss == "nll" else out.softmax(-1)
        probs.append(p.float().cpu())
        preds.append(out.argmax(-1).cpu())
        labels_all.append(labels.cpu())
    if n == 0:
        raise ValueError("cannot evaluate an empty split")
    pred = torch.cat(preds)
    lab = torch.cat(labels_all)
    return {
        "loss": loss_sum / n,
        "acc": float((pred == lab).double().mean().item()),
        "n": n,
        "preds": pred,
        "labels": lab,
        "probs": torch.cat(probs),
    }


def _criterion(config: Config) -> nn.Module:
    return nn.NLLLoss() if config.loss == "nll" else nn.CrossEntropyLoss()


# ----------------------------------------------------------------------------- model state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict`` with an error that lists what does not match."""
    resize = getattr(model, "resize_for_state", None)
    if resize is not None:  # parts whose size depends on the training data (the wide n-gram table)
        resize(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected)}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes))
        raise RunDirError(f"{source} does not match the model built from the config: " + "; ".join(parts))
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- opening the run directory


def _open_run_dir(rd: RunDir, config: Config, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Create, replace or reopen ``rd`` (locked by the caller); the run.json of a run to resume, else None."""
    if rd.is_empty():
        return None
    if overwrite:
        if not rd.is_run():
            raise RunDirError(
                f"{rd.path} is not empty and is not a run directory (no run.json); "
                "refusing to delete it for --overwrite: choose another --out"
            )
        rd.clear()
        return None
    if not resume:
        raise RunDirError(
            f"{rd.path} already exists and holds {rd.describe()}; pass --resume to continue it "
            "or --overwrite to replace it (or choose another --out)"
        )
    info = rd.read_info()
    old = config_from_toml(rd.config_path)
    diffs = [
        f"{f}: run has {getattr(old, f)!r}, now {getattr(config, f)!r}"
        for f in old.to_dict()
        if f not in RESUME_MUTABLE and getattr(old, f) != getattr(config, f)
    ]
    if diffs:
        raise RunDirError(
            f"cannot resume {rd.path}: the config differs from the run's config.toml in "
            + "; ".join(diffs)
            + " (only "
            + ", ".join(RESUME_MUTABLE)
            + " may change; "
            "use --overwrite to start again)"
        )
    return info


def _lock_and_open(
    rd: RunDir, config: Config, stack: ExitStack, *, resume: bool, overwrite: bool
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Lock ``rd`` for the rest of ``stack``, open it, and read last.pt of a run to resume."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: resume continues a run, overwrite replaces it")
    if rd.path.exists() and not rd.path.is_dir():
        raise RunDirError(f"{rd.path} exists and is not a directory")
    stack.enter_context(rd.lock())
    info = _open_run_dir(rd, config, resume=resume, overwrite=overwrite)
    if info is None or not rd.checkpoint_path("last").exists():
        return info, None
    ckpt = rd.load_checkpoint("last")
    if ckpt["epoch"] > config.epochs:
        raise RunDirError(
            f"cannot resume {rd.path} with epochs={config.epochs}: it has {ckpt['epoch']} epochs completed"
        )
    return info, ckpt


def _check_vocab(rd: RunDir, vocab: Any) -> None:
    """A resumed run must see the vocabulary it was trained with."""
    if not rd.vocab_path.exists():
        return
    from rnnlab.data import Vocabulary

    saved = Vocabulary.load(rd.vocab_path)
    if saved != vocab:
        raise RunDirError(
            f"cannot resume {rd.path}: the data's vocabulary ({len(vocab)} ids) differs from "
            f"the run's vocab.json ({len(saved)} ids); train on the same data and settings"
        )


# ----------------------------------------------------------------------------- training


def train_and_evaluate(
    config: Config,
    run_dir: str | os.PathLike,
    *,
    data: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> list[dict[str, Any]]:
    """Train ``config`` into ``run_dir``, evaluating on test (and validation) after every epoch.

    With ``config.test_every_epoch`` false, each epoch is evaluated on validation only and the
    test split once, after training, on the best-validation checkpoint (``run.json["test"]``).

    data: an encoded dataset (``rnnlab.data.EncodedData``) or None (load ``config.data``).
    resume: continue after the last completed epoch (a missing or empty ``run_dir`` starts
    fresh; a complete run returns its metrics). overwrite: replace an existing run.
    callbacks: :class:`rnnlab.train.callbacks.Callback` objects called after the loop's steps
    (besides the console log and TensorBoard).
    Returns the metrics rows of all completed epochs. The run directory is locked while this
    runs: another process that opens it gets a ``DirectoryInUseError`` naming this one's pid.
    Raises ``RunDirError`` for an unusable run directory or a failed write (run.json status
    ``failed``, the last committed epoch kept), ``TrainingError`` for a non-finite loss (likewise).

    Launched by ``torchrun`` (``WORLD_SIZE > 1``, see :mod:`rnnlab.train.distributed`), every
    rank calls this: DistributedDataParallel over contiguous slices of the same global batches,
    metrics reduced over ranks (equal to the one-process run's up to float summation order),
    and only rank 0 reads and writes the run directory and prints.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a rnnlab.train.Config, got {type(config).__name__}")
    if data is not None and config.val_fraction > 0 and data.val is None:
        raise ConfigError(
            f"val_fraction={config.val_fraction} asks for a validation split, but the data given "
            "has none (encode a dataset loaded with the same val_fraction)"
        )
    with distributed.session(select_device(config.device)) as (dist, device):
        if config.batch_size < dist.world_size:
            raise ConfigError(
                f"batch_size={config.batch_size} is smaller than the number of processes "
                f"({dist.world_size}): every rank needs at least one example of each full batch; "
                f"use batch_size >= {dist.world_size} or fewer processes"
            )
        with ExitStack() as stack:
            rd = RunDir(run_dir)
            # Rank 0 locks and prepares the run directory and reads the checkpoint; the others get both (or its error).
            info, ckpt = dist.on_main(lambda: _lock_and_open(rd, config, stack, resume=resume, overwrite=overwrite))
            if ckpt is not None and _is_trained(ckpt, info, config):
                return _already_trained(rd, config, data, info, ckpt, dist=dist, device=device, progress=progress)
            if data is None:
                data = _load_data_ranked(config, dist, progress)
            _set_threads(config, dist, device)
            if info is not None:
                dist.on_main(lambda: _check_vocab(rd, data.vocab), share=False)
            trainer = Trainer(
                config, rd, data, device=device, dist=dist, progress=progress and dist.is_main, callbacks=callbacks
            )
            if ckpt is not None:
                trainer.restore(ckpt)
            else:
                trainer.start()
            ckpt = None  # free it
            return trainer.fit()


def _load_data_ranked(config: Config, dist: distributed.Dist, progress: bool) -> Any:
    """``load_data``: rank 0 first (it fills the on-disk caches), then the others from the cache."""
    if not dist.enabled:
        return load_data(config, progress=progress)
    data = dist.on_main(lambda: load_data(config, progress=progress), share=False)
    return data if dist.is_main else load_data(config, progress=False)


def _set_threads(config: Config, dist: distributed.Dist, device: torch.device) -> None:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    elif dist.enabled and device.type == "cpu":
        torch.set_num_threads(distributed.threads_per_rank(dist))  # torchrun sets OMP_NUM_THREADS=1


def _is_trained(ckpt: dict[str, Any], info: dict[str, Any], config: Config) -> bool:
    """True when last.pt already holds every epoch asked for (or the run stopped early at this epoch count)."""
    return ckpt["epoch"] == config.epochs or bool(ckpt.get("stopped_early") and info.get("epochs") == config.epochs)


def _already_trained(
    rd: RunDir,
    config: Config,
    data: Any,
    info: dict[str, Any],
    ckpt: dict[str, Any],
    *,
    dist: distributed.Dist,
    device: torch.device,
    progress: bool,
) -> list[dict[str, Any]]:
    """A resumed run with nothing left to train: its files brought back to last.pt (a kill may have cut the
    last epoch's metrics row), the test pass run if a kill skipped it, the run marked complete."""
    if dist.is_main:
        rd.restore_files(ckpt)
    rows = list(ckpt["history"])
    if not config.test_every_epoch and "test" not in info:  # killed between training and the test pass
        data = data if data is not None else _load_data_ranked(config, dist, progress)
        test = _final_test(rd, config, data, dist=dist, device=device)
        if dist.is_main:
            ConsoleLog(rd).on_test(None, test)
            info = rd.update_info(test=test)
    if dist.is_main:
        print(f"{rd.path}: already complete ({ckpt['epoch']} epochs); nothing to train")
        if info.get("status") != "complete" or info.get("epochs_completed") != ckpt["epoch"]:
            rd.update_info(
                status="complete",
                epochs=config.epochs,
                epochs_completed=ckpt["epoch"],
                best_epoch=ckpt["best"]["epoch"],
                error=None,
            )
    return rows


@dataclass
class TrainState:
    """What last.pt restores besides the weights: the metrics rows, the best epoch and the patience.

    ``best``: ``{"epoch", "metric" ("val_acc" with a validation split, else "test_acc"), "value"}``.
    """

    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # the last completed epoch
    bad_epochs: int = 0
    stopped_early: bool = False

    def record(self, row: dict[str, Any]) -> bool:
        """Add an epoch's row; True when it improved the best value (then it is the best epoch)."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = row[self.best["metric"]] > self.best["value"]
        if improved:
            self.best.update(epoch=row["epoch"], value=row[self.best["metric"]])
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved


class Trainer:
    """One run's model, optimizer, schedule and state, trained by the steps named in the module docstring.

    Built on every rank (same seed: same initial weights); only rank 0 (``dist.is_main``) writes
    the run directory and calls the callbacks.
    """

    def __init__(
        self,
        config: Config,
        run_dir: RunDir,
        data: Any,
        *,
        device: torch.device,
        dist: distributed.Dist,
        progress: bool,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config, self.run_dir, self.data = config, run_dir, data
        self.device, self.dist, self.progress = device, dist, progress
        self.main = dist.is_main
        self.label_names = list(data.label_names)
        self.vocab_size = len(data.vocab)
        seed_everything(config.seed)  # every rank: the same initial weights (DDP also broadcasts rank 0's)
        self.model = build_model(config, self.vocab_size, len(self.label_names))
        self.model.fit_wide(data.train)  # the wide n-gram table: training reviews only (also on resume: same data)
        self.model.to(device)
        self.num_params = count_parameters(self.model)
        self.optimizer = make_optimizer(config, self.model)
        self.steps_per_epoch = _num_batches(_train_loader(data, config), len(data.train), config.batch_size)
        self.scheduler = _scheduler(self.optimizer, config, self.steps_per_epoch)
        metric = "val_acc" if data.val is not None else "test_acc"
        self.state = TrainState(best={"epoch": 0, "metric": metric, "value": -1.0})
        self.resumed_from: int | None = None
        self.repairs: list[str] = []
        self.callbacks: list[Callback] = []
        if self.main:
            tensorboard = TensorBoardLog.create(run_dir)
            self.callbacks = [ConsoleLog(run_dir), *([tensorboard] if tensorboard else []), *callbacks]

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -- setting up

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from last.pt: weights, optimizer, schedule, every generator, history, best epoch."""
        if ckpt.get("vocab_size") != self.vocab_size or ckpt.get("num_classes") != len(self.label_names):
            raise RunDirError(
                f"{self.run_dir.checkpoint_path('last')} was trained with {ckpt.get('vocab_size')} ids "
                f"and {ckpt.get('num_classes')} classes; the data has {self.vocab_size} and {len(self.label_names)}"
            )
        load_model_state(self.model, ckpt["model"], self.run_dir.checkpoint_path("last"))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])  # rank 0's generators, on every rank
        self.state = TrainState(dict(ckpt["best"]), list(ckpt["history"]), ckpt["epoch"], ckpt["bad_epochs"])
        self.resumed_from = ckpt["epoch"]
        if self.main:
            self.repairs = self.run_dir.restore_files(ckpt)  # metrics.jsonl and best.pt agree with last.pt
            self.run_dir.write_config(self.config.to_toml())  # the resumable fields may have changed

    def start(self) -> None:
        """A fresh run: the run directory's fixed files and, with keep_epoch_checkpoints, epoch_0.pt."""
        if not self.main:
            return
        rd, data = self.run_dir, self.data
        rd.write_metrics([])
        rd.start_log()
        rd.write_config(self.config.to_toml())
        rd.write_vocab(data.vocab)
        rd.write_tokenizer(data.tokenizer.to_dict())
        rd.write_model_text(f"{self.model}\n")
        if self.config.keep_epoch_checkpoints:
            rd.save_checkpoint(0, self.snapshot(0))

    def snapshot(self, epoch: int) -> dict[str, Any]:
        """The weights after ``epoch`` (``epoch_{k}.pt``), loadable by ``load_run(checkpoint="epoch_K")``."""
        return {"epoch": epoch, "model": self.model.state_dict(), **self._identity()}

    def _identity(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "vocab_size": self.vocab_size,
            "num_classes": len(self.label_names),
            "label_names": self.label_names,
        }

    # -- the loop

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs, test once if asked, mark the run complete; returns every metrics row."""
        trained = self.model  # DDP averages the gradients over ranks; checkpoints and evaluation use self.model
        if self.dist.enabled:
            trained = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        status = "failed"
        try:
            self.begin()
            for epoch in range(self.state.epoch + 1, self.config.epochs + 1):
                row = self.train_one_epoch(trained, epoch)
                row.update(self.evaluate())
                improved = self.state.record(row)
                self.commit_epoch(row, improved)
                self._emit("on_epoch_end", row)
                if self.stop_early():
                    break
            if not self.config.test_every_epoch:
                self.test_once()
            self.complete()
            status = "complete"
        except BaseException as err:
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            consequence = self.fail(err, status)
            if isinstance(err, RunDirError) and consequence:
                raise RunDirError(f"{err}; {consequence}") from err
            raise
        finally:
            self._emit("on_end", status)
        return self.state.history

    def begin(self) -> None:
        """run.json: status running, with what is known of the run so far."""
        self._emit("on_start")
        if not self.main:
            return
        self.run_dir.write_info(
            {
                "status": "running",
                "epochs_completed": self.state.epoch,
                "epochs": self.config.epochs,
                "num_params": self.num_params,
                "name": self.config.name,
                "seed": self.config.seed,
                "device": str(self.device),
                "label_names": self.label_names,
                "num_classes": len(self.label_names),
                "vocab_size": self.vocab_size,
                "best_epoch": self.state.best["epoch"],
                "best_metric": self.state.best["metric"],
                "world_size": self.dist.world_size,
                "backend": self.dist.backend,
            }
        )

    def train_one_epoch(self, trained: nn.Module, epoch: int) -> dict[str, Any]:
        """One pass over the training split: ``epoch``, train_loss, train_acc, timing and lr."""
        return _train_epoch(
            trained,
            self.optimizer,
            self.scheduler,
            self.data,
            self.config,
            self.device,
            epoch,
            self.steps_per_epoch,
            self.progress,
            dist=self.dist,
        )

    def evaluate(self) -> dict[str, Any]:
        """test_loss/test_acc (unless the test split is kept for the end), val_loss/val_acc, eval_seconds."""
        start = time.perf_counter()
        out: dict[str, Any] = {}
        if self.config.test_every_epoch:
            test = _evaluate(self.model, self.data.test, self.config, self.device, self.dist)
            out.update(test_loss=test["loss"], test_acc=test["acc"])
        if self.data.val is not None:
            val = _evaluate(self.model, self.data.val, self.config, self.device, self.dist)
            out.update(val_loss=val["loss"], val_acc=val["acc"])
        out["eval_seconds"] = time.perf_counter() - start
        return out

    def commit_epoch(self, row: dict[str, Any], improved: bool) -> None:
        """Write the epoch to the run directory (``RunDir.commit_epoch``: last.pt is the commit point).

        Rank 0 writes; a failed write (a full disk) is raised on every rank, so all stop together.
        """
        state = self.state
        # The metrics are all-reduced, so every rank takes the same decisions here.
        state.stopped_early = bool(self.config.early_stopping and state.bad_epochs >= self.config.early_stopping)

        def write() -> None:
            checkpoint = {
                "epoch": state.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
                "loader": {"seed": self.config.seed, "next_epoch": state.epoch + 1},
                "history": state.history,
                "best": dict(state.best),
                "bad_epochs": state.bad_epochs,
                "stopped_early": state.stopped_early,
                **self._identity(),
            }
            snapshot = self.snapshot(state.epoch) if self.config.keep_epoch_checkpoints else None
            self.run_dir.commit_epoch(
                checkpoint, state.history[-1], improved=improved, snapshot=snapshot, best_epoch=state.best["epoch"]
            )

        self.dist.on_main(write, share=False)

    def stop_early(self) -> bool:
        """True when validation accuracy has not improved for ``early_stopping`` epochs."""
        if self.state.stopped_early:
            self._emit("on_stop_early")
        return self.state.stopped_early

    def test_once(self) -> None:
        """The one test pass of a ``test_every_epoch = false`` run, on best.pt (see ``_final_test``)."""
        test = _final_test(self.run_dir, self.config, self.data, model=self.model, device=self.device, dist=self.dist)
        if self.main:
            self.run_dir.update_info(test=test)
        self._emit("on_test", test)

    def complete(self) -> None:
        if self.main:
            self.run_dir.update_info(status="complete", stopped_early=self.state.stopped_early, error=None)

    def fail(self, err: BaseException, status: str) -> str:
        """Settle the run directory after ``err`` (``RunDir.settle``); what became of the run, in words."""
        if not self.main:
            return ""
        if status == "interrupted":
            error = None
        else:
            error = str(err) if isinstance(err, RnnlabError) else f"{type(err).__name__}: {err}"
        notes = self.run_dir.settle(status, error=error)
        done = (self.run_dir.info or {}).get("epochs_completed", 0)
        kept = {0: "no epoch was completed", 1: "epoch 1 is kept"}.get(done, f"epochs 1-{done} are kept")
        said = f"the run is marked {status}; {kept}: continue it with --resume"
        if notes:
            said += " (and: " + "; ".join(notes) + ")"
        return said


def _scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int) -> Any:
    total_steps = steps_per_epoch * config.epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s,
            schedule=config.lr_schedule,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
        ),
    )


def _final_test(
    rd: RunDir,
    config: Config,
    data: Any,
    *,
    model: nn.Module | None = None,
    device: torch.device | None = None,
    dist: distributed.Dist | None = None,
) -> dict[str, Any]:
    """The one test pass of a ``test_every_epoch=false`` run, on ``checkpoints/best.pt``.

    best.pt holds the epoch with the best validation accuracy. Writes ``test.json`` and returns
    ``{"epoch", "loss", "acc", "n", "selected_by"}`` (the caller puts it into run.json as
    ``test``). Distributed: rank 0 reads best.pt and sends it to the others, the test split is
    sharded, rank 0 writes.
    """
    dist = dist or distributed.Dist()
    ckpt = dist.on_main(lambda: rd.load_checkpoint("best"))
    device = device or select_device(config.device)
    if model is None:
        model = build_model(config, ckpt["vocab_size"], ckpt["num_classes"]).to(device)
    load_model_state(model, ckpt["model"], rd.checkpoint_path("best"))
    result = _evaluate(model, data.test, config, device, dist)
    test = {
        "epoch": int(ckpt["epoch"]),
        "loss": result["loss"],
        "acc": result["acc"],
        "n": result["n"],
        "selected_by": "val_acc",
    }
    if dist.is_main:
        rd.write_test(test)
    return test


@torch.no_grad()
def _evaluate(
    model: nn.Module, split: Any, config: Config, device: torch.device, dist: distributed.Dist
) -> dict[str, Any]:
    """``run_eval``'s loss, acc and n; distributed: each rank evaluates its slice of every batch, sums reduced."""
    if not dist.enabled:
        return run_eval(model, split, config, device)
    from rnnlab.data import make_loader

    model.eval()
    criterion = _criterion(config)
    loss_sum, correct, n = 0.0, 0, 0
    loader = make_loader(split, config.eval_batch_size, shuffle=False, seed=config.seed, bucket=True)
    for ids, lengths, labels, n_r, _ in distributed.shard_batches(loader, dist):
        if n_r == 0:
            continue
        ids, labels = ids.to(device), labels.to(device)
        out = model(ids, lengths)
        loss_sum += float(criterion(out, labels).item()) * n_r
        correct += int((out.argmax(-1) == labels).sum().item())
        n += n_r
    loss_sum, correct, n = dist.all_sum([loss_sum, correct, n])
    if n == 0:
        raise ValueError("cannot evaluate an empty split")
    return {"loss": loss_sum / n, "acc": correct / n, "n": int(n)}


def _train_loader(data: Any, config: Config) -> Any:
    from rnnlab.data import make_loader

    return make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed, bucket=config.bucket)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: Any,
    config: Config,
    device: torch.device,
    epoch: int,
    steps_per_epoch: int,
    progress: bool,
    *,
    dist: distributed.Dist | None = None,
) -> dict[str, Any]:
    """One pass over the training split; returns train_loss, train_acc, timing and lr.

    Distributed (``model`` wrapped in DDP): each rank runs its slice of every global batch of
    ``n`` examples, back-propagates ``loss_r * n_r * W / n`` so that DDP's gradient average is
    the one-process gradient of the batch's mean loss, and the loss and accuracy sums are
    all-reduced every step (one collective non-finite check, so all ranks stop together).
    """
    from tqdm import tqdm

    dist = dist or distributed.Dist()
    loader = _train_loader(data, config)
    loader.set_epoch(epoch - 1)
    criterion = _criterion(config)
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(
        distributed.shard_batches(loader, dist),
        total=steps_per_epoch,
        desc=f"Epoch {epoch}/{config.epochs}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    start = time.perf_counter()
    for step, (ids, lengths, labels, n_r, n) in enumerate(bar, 1):
        ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss, loss_value, step_correct = _batch_loss(
            model, criterion, ids, lengths, labels, n_r, n, dist, deep_weight=config.deep_loss_weight
        )
        if not math.isfinite(loss_value):
            raise _non_finite(loss_value, epoch, step, steps_per_epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        loss_sum += loss_value * n
        correct += step_correct
        seen += n
        if progress and (step % 10 == 0 or step == steps_per_epoch):
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    if seen == 0:
        raise TrainingError("the training split produced no batches")
    return {
        "epoch": epoch,
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "epoch_seconds": seconds,
        "examples_per_second": seen / seconds if seconds > 0 else float("inf"),
        "lr": lr,
    }


def _batch_loss(
    model: nn.Module,
    criterion: nn.Module,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    labels: torch.Tensor,
    n_r: int,
    n: int,
    dist: distributed.Dist,
    *,
    deep_weight: float = 0.0,
) -> tuple[torch.Tensor, float, int]:
    """``(loss to back-propagate, the batch's mean loss, its correct predictions)`` of one global batch.

    ``deep_weight`` > 0 (a wide-and-deep model): the deep part's own loss, times ``deep_weight``, is
    added to the loss to back-propagate (``loss(deep + wide) + deep_weight * loss(deep)``), so that the
    deep part keeps learning once the wide part fits the training reviews; the reported loss and
    accuracy are the model's (deep + wide).

    Distributed: this rank's slice is ``n_r`` of the batch's ``n`` examples; the loss and the
    correct count are summed over ranks, and the loss to back-propagate is ``loss_r * n_r * W / n``.
    An empty slice runs one stand-in example with weight 0, so that DDP's all-reduce still matches.
    """
    out = model(ids, lengths)
    loss = criterion(out, labels)
    total = loss + deep_weight * _deep_loss(model, criterion, labels) if deep_weight else loss
    if not dist.enabled:
        return total, float(loss.item()), int((out.argmax(-1) == labels).sum().item())
    step_loss, step_correct = dist.all_sum(
        [float(loss.item()) * n_r if n_r else 0.0, int((out.argmax(-1) == labels).sum().item()) if n_r else 0]
    )
    return total * (n_r * dist.world_size / n), step_loss / n, int(step_correct)


def _deep_loss(model: nn.Module, criterion: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The loss of the deep part's logits alone (``RNNClassifier.deep_logits`` of the forward just run)."""
    base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    deep = getattr(base, "deep_logits", None)
    if deep is None:
        raise TrainingError("deep_loss_weight > 0 needs a wide-and-deep model (wide_ngrams >= 1)")
    return criterion(torch.log_softmax(deep, -1) if isinstance(criterion, nn.NLLLoss) else deep, labels)


def _non_finite(loss_value: float, epoch: int, step: int, steps_per_epoch: int) -> TrainingError:
    kept = (
        f"The last good checkpoint (epoch {epoch - 1}) is kept"
        if epoch > 1
        else "No checkpoint was written (it failed in the first epoch)"
    )
    return TrainingError(
        f"non-finite training loss ({loss_value}) at epoch {epoch}, step {step} of {steps_per_epoch}; "
        f"stopped before updating the weights. {kept}; try a lower lr or a grad_clip"
    )
