"""Hooks into the training loop: the console/train.log lines and TensorBoard scalars hang off these.

``train_and_evaluate(..., callbacks=[...])`` adds the caller's own. Callbacks run on rank 0 only,
after the step they describe: ``on_epoch_end`` after the epoch was committed to the run directory.

    class Callback:
        on_start(trainer)             the run is set up (fresh, or restored: trainer.resumed_from)
        on_epoch_end(trainer, row)    an epoch is trained, evaluated and committed; row: its metrics
        on_stop_early(trainer)        early stopping ends the run after this epoch
        on_test(trainer, test)        the one test pass of a test_every_epoch=false run
        on_end(trainer, status)       always, last: "complete", "failed" or "interrupted"

``trainer`` is the :class:`rnnlab.train.runner.Trainer` (``config``, ``model``, ``state``,
``run_dir``, ``data``...); ``on_test`` may get None when the run was already trained.
"""

from __future__ import annotations

import sys
from typing import Any

from rnnlab.rundir import RunDir


class Callback:
    """Base class: every hook does nothing."""

    def on_start(self, trainer: Any) -> None:
        pass

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        pass

    def on_stop_early(self, trainer: Any) -> None:
        pass

    def on_test(self, trainer: Any, test: dict[str, Any]) -> None:
        pass

    def on_end(self, trainer: Any, status: str) -> None:
        pass


class ConsoleLog(Callback):
    """The console lines (printed above any progress bar) in the original experiment's format, each
    also appended to the run's ``train.log``."""

    def __init__(self, run_dir: RunDir, *, console: bool = True) -> None:
        self.run_dir = run_dir
        self.console = console

    def line(self, text: str = "") -> None:
        if self.console:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        self.run_dir.append_log(text)

    def on_start(self, trainer: Any) -> None:
        if trainer.resumed_from is not None:
            for note in trainer.repairs:
                self.line(f"Repaired {note}")
            self.line(f"Resuming from epoch {trainer.resumed_from} ({self.run_dir.path})")
            return
        data, dist = trainer.data, trainer.dist
        self.line(f"vocab_size: {trainer.vocab_size}")
        self.line(str(trainer.model))
        self.line(
            f"Parameters: {trainer.num_params:,}  device: {trainer.device}  train: {len(data.train)}  "
            f"test: {len(data.test)}"
            + (f"  val: {len(data.val)}" if data.val is not None else "")
            + (f"  processes: {dist.world_size} ({dist.backend})" if dist.enabled else "")
        )

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        self.line(f"Train Epoch: {row['epoch']} Loss: {row['train_loss']:.6f} Acc: {row['train_acc']:.6f}")
        if "val_acc" in row:
            self.line(f"Validation set: Average loss: {row['val_loss']:.4f}, Accuracy: {row['val_acc']:.4f}")
        if "test_acc" in row:
            self.line(f"Test set: Average loss: {row['test_loss']:.4f}, Accuracy: {row['test_acc']:.4f}")

    def on_stop_early(self, trainer: Any) -> None:
        state = trainer.state
        self.line(
            f"Early stopping: validation accuracy has not improved for {state.bad_epochs} epochs "
            f"(best {state.best['value']:.4f} at epoch {state.best['epoch']})"
        )

    def on_test(self, trainer: Any, test: dict[str, Any]) -> None:
        self.line(
            f"Test set (epoch {test['epoch']}, best validation accuracy): Average loss: {test['loss']:.4f}, "
            f"Accuracy: {test['acc']:.4f}"
        )


class TensorBoardLog(Callback):
    """Every metric of every epoch as a TensorBoard scalar, in ``RUN_DIR/tensorboard``."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def create(cls, run_dir: RunDir) -> TensorBoardLog | None:
        """The callback, or None when TensorBoard is not installed (logging to it is optional)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard not installed
            return None
        return cls(SummaryWriter(str(run_dir.tensorboard_dir)))

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def on_end(self, trainer: Any, status: str) -> None:
        self.writer.close()
