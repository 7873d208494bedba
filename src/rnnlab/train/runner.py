"""The training loop and the run directory: ``train_and_evaluate(config, run_dir)``.

Run directory (docs/ARCHITECTURE.md): ``config.toml``, ``run.json``, ``vocab.json``,
``tokenizer.json``, ``metrics.jsonl``, ``checkpoints/{last,best}.pt``, ``model.txt``,
``train.log``. Every file is written to a temporary name, then ``os.replace``d, so a kill
at any moment leaves the previous complete version.

Determinism: Python's, NumPy's and torch's generators are seeded with ``config.seed``
before the model is built; the loader's order is a function of (seed, epoch); the
checkpoint stores every generator's state, so a resumed run continues with exactly the
random numbers the uninterrupted run would have drawn (bit-identical on CPU).

Distributed (``torchrun --nproc_per_node=N -m rnnlab train``, :mod:`rnnlab.train.distributed`):
every rank runs ``train_and_evaluate`` on its slice of the same global batches, wrapped in
DistributedDataParallel; metrics are all-reduced; rank 0 alone reads and writes the run
directory (the others receive its checkpoint and its errors by broadcast) and prints.
Checkpoints hold the plain module's state_dict, so any run resumes with any process count.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnlab import __version__
from rnnlab._io import torch_save, write_json, write_text
from rnnlab.models import build_model, count_parameters
from rnnlab.train import distributed
from rnnlab.train.config import Config, ConfigError, config_from_toml
from rnnlab.train.dataset import load_key, load_texts

#: Version of the run directory layout; a run directory of another format is refused.
FORMAT = 1
#: Config fields that may change when a run is resumed (they do not change the model or the data).
RESUME_MUTABLE = ("name", "epochs", "device", "num_threads", "data", "test_data", "early_stopping", "eval_batch_size")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (exists, incompatible, mismatched)."""


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``RUN_DIR/metrics.jsonl`` (one dict per completed epoch; [] when none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise RunDirError(f"{path}:{lineno}: not valid JSON ({err})") from None
    return rows


def _write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json``, checked to be of this rnnlab's format."""
    path = run_dir / "run.json"
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a run directory: no run.json (written by `rnnlab train`)")
    info = read_json(path)
    if info.get("format") != FORMAT:
        raise RunDirError(
            f"{run_dir} was written by rnnlab {info.get('rnnlab_version', '?')} in run-directory format "
            f"{info.get('format')!r}; this rnnlab ({__version__}) reads format {FORMAT}"
        )
    return info


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


def make_optimizer(config: Config, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """adam / adamw (decoupled weight decay) / sgd (momentum 0.9)."""
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


# ----------------------------------------------------------------------------- run directory


def _prepare_run_dir(run_dir: Path, config: Config, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Create, replace or reopen ``run_dir``; returns the run.json of a run to resume, else None."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: resume continues a run, overwrite replaces it")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if not occupied:
        run_dir.mkdir(parents=True, exist_ok=True)
        return None
    if overwrite:
        if not (run_dir / "run.json").exists():
            raise RunDirError(
                f"{run_dir} is not empty and is not a run directory (no run.json); "
                "refusing to delete it for --overwrite: choose another --out"
            )
        shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        return None
    if not resume:
        try:
            info = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else None
        except RunDirError:
            info = None
        what = (
            f"a run ({info.get('status')}, {info.get('epochs_completed')}/{info.get('epochs')} epochs)"
            if info
            else "files"
        )
        raise RunDirError(
            f"{run_dir} already exists and holds {what}; pass --resume to continue it "
            "or --overwrite to replace it (or choose another --out)"
        )
    info = read_run_info(run_dir)
    old = config_from_toml(run_dir / "config.toml")
    diffs = [
        f"{f}: run has {getattr(old, f)!r}, now {getattr(config, f)!r}"
        for f in old.to_dict()
        if f not in RESUME_MUTABLE and getattr(old, f) != getattr(config, f)
    ]
    if diffs:
        raise RunDirError(
            f"cannot resume {run_dir}: the config differs from the run's config.toml in "
            + "; ".join(diffs)
            + " (only "
            + ", ".join(RESUME_MUTABLE)
            + " may change; "
            "use --overwrite to start again)"
        )
    return info


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing error
        raise RunDirError(f"{path}: not a readable rnnlab checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RunDirError(f"{path}: checkpoint format {found!r}, this rnnlab ({__version__}) reads format {FORMAT}")
    return ckpt


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict`` with an error that lists what does not match."""
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


class _Log:
    """Prints console lines (above any progress bar) and appends them to ``train.log``.

    ``enabled=False`` (ranks other than 0 of a distributed run): prints and writes nothing.
    """

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def __call__(self, line: str = "", *, console: bool = True) -> None:
        if not self.enabled:
            return
        if console:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard not installed: logging is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ----------------------------------------------------------------------------- training


def train_and_evaluate(
    config: Config,
    run_dir: str | os.PathLike,
    *,
    data: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``config`` into ``run_dir``, evaluating on test (and validation) after every epoch.

    With ``config.test_every_epoch`` false, each epoch is evaluated on validation only and the
    test split once, after training, on the best-validation checkpoint (``run.json["test"]``).

    data: an encoded dataset (``rnnlab.data.EncodedData``) or None (load ``config.data``).
    resume: continue after the last completed epoch (a missing or empty ``run_dir`` starts
    fresh; a complete run returns its metrics). overwrite: replace an existing run.
    Returns the metrics rows of all completed epochs. Raises ``RunDirError`` for an unusable
    run directory, ``TrainingError`` for a non-finite loss (``run.json`` status ``failed``,
    the last good checkpoint kept).

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
        return _train_and_evaluate(
            config,
            Path(run_dir),
            data=data,
            resume=resume,
            overwrite=overwrite,
            progress=progress and dist.is_main,
            dist=dist,
            device=device,
        )


def _load_data_ranked(config: Config, dist: distributed.Dist, progress: bool) -> Any:
    """``load_data``: rank 0 first (it fills the on-disk caches), then the others from the cache."""
    if not dist.enabled:
        return load_data(config, progress=progress)
    data = dist.on_main(lambda: load_data(config, progress=progress), share=False)
    return data if dist.is_main else load_data(config, progress=False)


def _train_and_evaluate(
    config: Config,
    run_dir: Path,
    *,
    data: Any,
    resume: bool,
    overwrite: bool,
    progress: bool,
    dist: distributed.Dist,
    device: torch.device,
) -> list[dict[str, Any]]:
    main = dist.is_main
    last_path = run_dir / "checkpoints" / "last.pt"

    def prepare() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        info = _prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
        if info is None or not last_path.exists():
            return info, None
        ckpt = _load_checkpoint(last_path)
        if ckpt["epoch"] > config.epochs:
            raise RunDirError(
                f"cannot resume {run_dir} with epochs={config.epochs}: it has {ckpt['epoch']} epochs completed"
            )
        return info, ckpt

    # Rank 0 prepares the run directory and reads the checkpoint; the others get both (or its error).
    info, ckpt = dist.on_main(prepare)
    if ckpt is not None:
        done = ckpt["epoch"]
        if done == config.epochs or (ckpt.get("stopped_early") and info.get("epochs") == config.epochs):
            rows = dist.on_main(lambda: read_metrics(run_dir))
            if not config.test_every_epoch and "test" not in info:  # killed between training and the test pass
                _final_test(
                    run_dir,
                    config,
                    data if data is not None else _load_data_ranked(config, dist, progress),
                    info,
                    _Log(run_dir / "train.log", enabled=main),
                    dist=dist,
                    device=device,
                )
            if main:
                print(f"{run_dir}: already complete ({done} epochs); nothing to train")
                if info.get("status") != "complete":
                    info.update(status="complete", epochs=config.epochs)
                    info.pop("error", None)
                    write_json(run_dir / "run.json", info)
            return rows
    if data is None:
        data = _load_data_ranked(config, dist, progress)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    elif dist.enabled and device.type == "cpu":
        torch.set_num_threads(distributed.threads_per_rank(dist))  # torchrun sets OMP_NUM_THREADS=1
    label_names = list(data.label_names)
    num_classes = len(label_names)
    vocab_size = len(data.vocab)
    if info is not None:

        def check_vocab() -> None:
            saved_vocab = _read_vocab(run_dir / "vocab.json")
            if saved_vocab is not None and saved_vocab != data.vocab:
                raise RunDirError(
                    f"cannot resume {run_dir}: the data's vocabulary ({vocab_size} ids) differs from "
                    f"the run's vocab.json ({len(saved_vocab)} ids); train on the same data and "
                    "settings"
                )

        dist.on_main(check_vocab, share=False)

    seed_everything(config.seed)  # every rank: the same initial weights (DDP also broadcasts rank 0's)
    model = build_model(config, vocab_size, num_classes).to(device)
    optimizer = make_optimizer(config, model.parameters())
    steps_per_epoch = _num_batches(_train_loader(data, config), len(data.train), config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s,
            schedule=config.lr_schedule,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
        ),
    )
    num_params = count_parameters(model)
    log = _Log(run_dir / "train.log", enabled=main)

    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "metric": "val_acc" if data.val is not None else "test_acc", "value": -1.0}
    bad_epochs = 0
    start_epoch = 1
    if ckpt is not None:
        if ckpt.get("vocab_size") != vocab_size or ckpt.get("num_classes") != num_classes:
            raise RunDirError(
                f"{last_path} was trained with {ckpt.get('vocab_size')} ids "
                f"and {ckpt.get('num_classes')} classes; the data has {vocab_size} and {num_classes}"
            )
        load_model_state(model, ckpt["model"], last_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])  # rank 0's generators, on every rank
        history = list(ckpt["history"])
        best, bad_epochs = dict(ckpt["best"]), ckpt["bad_epochs"]
        start_epoch = ckpt["epoch"] + 1
        if main:
            _write_metrics(run_dir, history)
            write_text(run_dir / "config.toml", config.to_toml())  # the resumable fields may have changed
        log(f"Resuming from epoch {ckpt['epoch']} ({run_dir})")
    elif main:
        _write_metrics(run_dir, [])
        (run_dir / "train.log").write_text("", encoding="utf-8")
        write_text(run_dir / "config.toml", config.to_toml())
        data.vocab.save(run_dir / "vocab.json")
        write_json(run_dir / "tokenizer.json", data.tokenizer.to_dict())
        write_text(run_dir / "model.txt", f"{model}\n")
        log(f"vocab_size: {vocab_size}")
        log(str(model))
        log(
            f"Parameters: {num_params:,}  device: {device}  train: {len(data.train)}  test: {len(data.test)}"
            + (f"  val: {len(data.val)}" if data.val is not None else "")
            + (f"  processes: {dist.world_size} ({dist.backend})" if dist.enabled else "")
        )
    ckpt = None  # free it

    # The module that trains: DDP averages the gradients over ranks; checkpoints and evaluation use `model`.
    trained: nn.Module = model
    if dist.enabled:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    run_info = {
        "rnnlab_version": __version__,
        "format": FORMAT,
        "status": "running",
        "epochs_completed": start_epoch - 1,
        "epochs": config.epochs,
        "num_params": num_params,
        "name": config.name,
        "seed": config.seed,
        "device": str(device),
        "label_names": label_names,
        "num_classes": num_classes,
        "vocab_size": vocab_size,
        "best_epoch": best["epoch"],
        "best_metric": best["metric"],
        "world_size": dist.world_size,
        "backend": dist.backend,
    }
    if main:
        write_json(run_dir / "run.json", run_info)
    writer = _tensorboard(run_dir) if main else None
    stopped_early = False
    # What a resume would continue from is last.pt: on an error or interrupt, metrics.jsonl and
    # run.json are rewritten to match it, whichever of the epoch's writes had happened.
    committed = {"epoch": start_epoch - 1, "best_epoch": best["epoch"], "history": list(history)}
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            row = _train_epoch(
                trained, optimizer, scheduler, data, config, device, epoch, steps_per_epoch, progress, dist=dist
            )
            eval_start = time.perf_counter()
            if config.test_every_epoch:
                test = _evaluate(model, data.test, config, device, dist)
                row.update(test_loss=test["loss"], test_acc=test["acc"])
            if data.val is not None:
                val = _evaluate(model, data.val, config, device, dist)
                row.update(val_loss=val["loss"], val_acc=val["acc"])
            row["eval_seconds"] = time.perf_counter() - eval_start
            row = {"epoch": epoch, **{k: row[k] for k in row if k != "epoch"}}
            history.append(row)
            log(f"Train Epoch: {epoch} Loss: {row['train_loss']:.6f} Acc: {row['train_acc']:.6f}")
            if "val_acc" in row:
                log(f"Validation set: Average loss: {row['val_loss']:.4f}, Accuracy: {row['val_acc']:.4f}")
            if "test_acc" in row:
                log(f"Test set: Average loss: {row['test_loss']:.4f}, Accuracy: {row['test_acc']:.4f}")
            # The metrics are all-reduced, so every rank takes the same decisions here.
            improved = row[best["metric"]] > best["value"]
            if improved:
                best.update(epoch=epoch, value=row[best["metric"]])
                bad_epochs = 0
            else:
                bad_epochs += 1
            stopped_early = bool(config.early_stopping and bad_epochs >= config.early_stopping)
            if main:
                ckpt_out = {
                    "format": FORMAT,
                    "rnnlab_version": __version__,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                    "loader": {"seed": config.seed, "next_epoch": epoch + 1},
                    "history": history,
                    "best": dict(best),
                    "bad_epochs": bad_epochs,
                    "stopped_early": stopped_early,
                    "config": config.to_dict(),
                    "vocab_size": vocab_size,
                    "num_classes": num_classes,
                    "label_names": label_names,
                }
                if improved:  # best.pt before last.pt: a last.pt of an improving epoch always has its best.pt
                    torch_save(run_dir / "checkpoints" / "best.pt", ckpt_out)
                torch_save(last_path, ckpt_out)
                _write_metrics(run_dir, history)
                run_info.update(epochs_completed=epoch, best_epoch=best["epoch"])
                write_json(run_dir / "run.json", run_info)
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            writer.add_scalar(key, value, epoch)
                    writer.flush()
            if stopped_early:
                log(
                    f"Early stopping: validation accuracy has not improved for {bad_epochs} epochs "
                    f"(best {best['value']:.4f} at epoch {best['epoch']})"
                )
                break
    except BaseException as err:
        if main:
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
            if last_path.exists():  # the interrupt may land anywhere, even just after last.pt was replaced
                try:
                    saved = _load_checkpoint(last_path)
                    committed = {
                        "epoch": saved["epoch"],
                        "best_epoch": saved["best"]["epoch"],
                        "history": saved["history"],
                    }
                except (RunDirError, KeyError, TypeError):
                    pass
            _write_metrics(run_dir, committed["history"])
            run_info.update(
                status="failed", error=reason, epochs_completed=committed["epoch"], best_epoch=committed["best_epoch"]
            )
            write_json(run_dir / "run.json", run_info)
        raise
    finally:
        if writer is not None:
            writer.close()
    if not config.test_every_epoch:
        run_info["stopped_early"] = stopped_early
        _final_test(run_dir, config, data, run_info, log, model=model, device=device, dist=dist)
    if main:
        run_info.update(status="complete", stopped_early=stopped_early)
        run_info.pop("error", None)
        write_json(run_dir / "run.json", run_info)
    return history


def _final_test(
    run_dir: Path,
    config: Config,
    data: Any,
    run_info: dict[str, Any],
    log: Any,
    *,
    model: nn.Module | None = None,
    device: torch.device | None = None,
    dist: distributed.Dist | None = None,
) -> dict[str, Any]:
    """The one test pass of a ``test_every_epoch=false`` run, on ``checkpoints/best.pt``.

    best.pt holds the epoch with the best validation accuracy. Writes ``test.json`` and
    ``run_info["test"] = {"epoch", "loss", "acc", "n", "selected_by"}`` (run.json is written by
    the caller, or here when the run was already marked complete). Distributed: rank 0 reads
    best.pt and sends it to the others, the test split is sharded, rank 0 writes.
    """
    dist = dist or distributed.Dist()
    best_path = run_dir / "checkpoints" / "best.pt"
    ckpt = dist.on_main(lambda: _load_checkpoint(best_path))
    device = device or select_device(config.device)
    if model is None:
        model = build_model(config, ckpt["vocab_size"], ckpt["num_classes"]).to(device)
    load_model_state(model, ckpt["model"], best_path)
    result = _evaluate(model, data.test, config, device, dist)
    test = {
        "epoch": int(ckpt["epoch"]),
        "loss": result["loss"],
        "acc": result["acc"],
        "n": result["n"],
        "selected_by": "val_acc",
    }
    run_info["test"] = test
    if dist.is_main:
        write_json(run_dir / "test.json", test)
        if run_info.get("status") == "complete":
            write_json(run_dir / "run.json", run_info)
    log(
        f"Test set (epoch {test['epoch']}, best validation accuracy): Average loss: {test['loss']:.4f}, "
        f"Accuracy: {test['acc']:.4f}"
    )
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


def _read_vocab(path: Path) -> Any:
    if not path.exists():
        return None
    from rnnlab.data import Vocabulary

    return Vocabulary.load(path)


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
        out = model(ids, lengths)
        loss = criterion(out, labels)
        if dist.enabled:
            # An empty slice runs one stand-in example with weight 0, so that DDP's all-reduce still matches.
            step_loss, step_correct = dist.all_sum(
                [float(loss.item()) * n_r if n_r else 0.0, int((out.argmax(-1) == labels).sum().item()) if n_r else 0]
            )
            loss_value = step_loss / n
            loss = loss * (n_r * dist.world_size / n)
        else:
            loss_value = float(loss.item())
            step_correct = int((out.argmax(-1) == labels).sum().item())
        if not math.isfinite(loss_value):
            kept = (
                f"The last good checkpoint (epoch {epoch - 1}) is kept"
                if epoch > 1
                else "No checkpoint was written (it failed in the first epoch)"
            )
            raise TrainingError(
                f"non-finite training loss ({loss_value}) at epoch {epoch}, step {step} of {steps_per_epoch}; "
                f"stopped before updating the weights. {kept}; try a lower lr or a grad_clip"
            )
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
