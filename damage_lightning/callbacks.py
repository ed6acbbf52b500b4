"""Lightning callbacks: the checkpoint keeping ``last.ckpt`` current, history, BatchNorm adaptation.

What is not a callback (the end-of-fit model card, exports and report; prediction CSVs) is in
:mod:`damage_lightning.run`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from damage_lightning import heap
from damage_lightning.artifacts import TMP_PREFIX, atomic_write_json
from damage_lightning.errors import DataValidationError, Problem

log = logging.getLogger(__name__)

HISTORY_KEYS = ("train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1")


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is always the latest completed epoch, written once.

    Lightning 2.6 writes ``last.ckpt`` only in a step where it also writes a top-k checkpoint (a
    new best), so after epochs without improvement it lags behind, and ``--ckpt_path last`` would
    resume a killed run from its best epoch and lose the epochs after it. This saves it at the end
    of every epoch, in ModelCheckpoint's own hook and code path (after EarlyStopping has updated
    its state; every rank takes part, so distributed runs stay in step).

    In an epoch that improves, the top-k file (``best.ckpt``) and ``last.ckpt`` hold the same
    state; ``last.ckpt`` is then a hard link to it instead of a second copy (a copy where the
    folder cannot hold hard links), which halves the bytes written in such an epoch. Every file
    is written under a temporary name in its own folder and renamed over the old one, so a link
    is never written through, and a killed write leaves the old file whole (Lightning's own
    save goes through the system's temporary folder, and copies into the old file where that
    is another file system). With Lightning's default ``TorchCheckpointIO``, that file is written
    by one ``torch.save`` straight into it (:class:`DirectCheckpointIO`); a ``CheckpointIO``
    plugin of the user's own is used as given. Folders on remote file systems get Lightning's
    plain saves. Arguments are ModelCheckpoint's.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the top-k checkpoint as usual, then ``last.ckpt`` if that did not already."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Same, for runs that validate less often than every epoch."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        if (
            self.save_last is True
            and self._last_global_step_saved != trainer.global_step
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Lightning's save under a temporary name in the same folder, renamed over ``filepath``."""
        if not _is_local_file_protocol(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        partial = _partial_path(filepath)
        if trainer.is_global_zero:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)  # left by a killed run (perhaps a link: never written through)
        with _direct_writes(trainer.strategy):
            trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier("RunCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _save_last_checkpoint(
        self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]
    ) -> None:
        """``last.ckpt`` as a hard link to the top-k file written at this step, if there is one."""
        source = self._last_checkpoint_saved
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if not (
            self.save_last is True
            and not self._enable_version_counter
            and source
            and self._last_global_step_saved == trainer.global_step
            and os.path.abspath(source) != os.path.abspath(filepath)
            and _is_local_file_protocol(filepath)
        ):
            super()._save_last_checkpoint(trainer, monitor_candidates)
            return
        previous, self.last_model_path = self.last_model_path, filepath
        if trainer.is_global_zero:
            partial = _partial_path(filepath)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            try:
                os.link(source, partial)
            except OSError:  # a file system without hard links
                shutil.copyfile(source, partial)
            os.replace(partial, filepath)
        trainer.strategy.barrier("RunCheckpoint._save_last_checkpoint")
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)


class DirectCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with one ``torch.save`` straight into the file.

    Lightning's own save serialises the checkpoint into memory, copies that buffer and writes
    the copy through an fsspec transaction (a temporary file in the system's temporary folder,
    then a move): three passes over every byte, two of them into fresh memory. For the default
    ResNet's 34 MB (weights and AdamW state) that took 0.11-0.19 s against 0.02-0.04 s written
    directly, on a 2-second benchmark epoch (docs/benchmarks.md). Writing straight into the
    file is not atomic by itself: :class:`RunCheckpoint` gives it a temporary name in the
    checkpoint's own folder and renames the finished file into place.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to the local file ``path`` (its folder is made if missing)."""
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)  # raises the TypeError
            return
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        torch.save(checkpoint, os.fspath(path))


@contextlib.contextmanager
def _direct_writes(strategy: Any) -> Any:
    """Within the block, ``strategy`` saves with :class:`DirectCheckpointIO`, if it has the default.

    Only Lightning's default ``TorchCheckpointIO`` is replaced; any other plugin (async, cloud,
    the user's own) stays. The default comes back afterwards, also after an error.
    """
    stock = getattr(strategy, "checkpoint_io", None)
    if type(stock) is not TorchCheckpointIO:
        yield
        return
    strategy.checkpoint_io = DirectCheckpointIO()
    try:
        yield
    finally:
        strategy.checkpoint_io = stock


def _partial_path(filepath: str) -> str:
    """Where a checkpoint is written before it is renamed to ``filepath`` (same folder)."""
    folder, name = os.path.split(filepath)
    return os.path.join(folder, f"{TMP_PREFIX}{name}.partial")


class RunArtifacts(Callback):
    """Writes ``training_history.json`` after every epoch and ``splits.json`` at the start of fit.

    Rank zero only. A resumed run keeps the history of the epochs before the checkpoint and
    replaces anything recorded after it, so the file always describes the run that continues.
    On Ctrl-C it saves ``checkpoints/last.ckpt`` and prints how to resume.

    Args:
        run_dir: the run folder.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.history: dict[str, Any] | None = None
        self._epoch_start = 0.0
        self._epoch_lr: float | None = None

    @property
    def history_path(self) -> Path:
        """Where the history is written."""
        return self.run_dir / "training_history.json"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the split assignment."""
        dm = trainer.datamodule
        if trainer.is_global_zero and dm is not None and hasattr(dm, "splits_json"):
            atomic_write_json(self.run_dir / "splits.json", dm.splits_json())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the epoch's start time and learning rate."""
        self._epoch_start = time.perf_counter()
        # A task without weights (the novelty task's spectrum backbone) has no optimiser groups.
        groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
        self._epoch_lr = float(groups[0]["lr"]) if groups else None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch (validation has run by now) and rewrite the history file."""
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        entry: dict[str, Any] = {"epoch": int(trainer.current_epoch)}
        for key in HISTORY_KEYS:
            if key in metrics:
                entry[key] = float(metrics[key])
        entry["lr"] = self._epoch_lr
        entry["epoch_time_s"] = round(time.perf_counter() - self._epoch_start, 4)
        history = self._load()
        history["epochs"] = [e for e in history["epochs"] if e["epoch"] < entry["epoch"]]
        history["epochs"].append(entry)
        self._write(trainer, history)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final history with the early-stopping outcome."""
        if trainer.is_global_zero:
            self._write(trainer, self._load())

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """On Ctrl-C, make sure ``last.ckpt`` exists and say how to resume.

        ``last.ckpt`` already holds the end of the last completed epoch (saved every epoch), and
        that is the state to resume from: the interrupted epoch then runs again from its start.
        Only when no epoch has completed yet is the current (mid-epoch) state saved.
        """
        if not isinstance(exception, KeyboardInterrupt):
            return
        path = self.run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            try:
                trainer.save_checkpoint(path)
            except Exception as exc:  # the interrupt must still end the run
                print(f"could not save {path}: {exc}", file=sys.stderr)
                return
        if trainer.is_global_zero:
            print(
                f"\ninterrupted: last checkpoint {path}\n"
                "resume with: python -m damage_lightning fit "
                f"--config {self.run_dir / 'config.yaml'} --ckpt_path {path}",
                file=sys.stderr,
            )

    def _load(self) -> dict[str, Any]:
        if self.history is None:
            import json

            self.history = {"epochs": []}
            if self.history_path.is_file():
                try:
                    self.history = json.loads(self.history_path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    log.warning("%s unreadable; starting a new history", self.history_path)
        return self.history

    def _write(self, trainer: pl.Trainer, history: dict[str, Any]) -> None:
        epochs = history["epochs"]
        history["monitor"] = "val_loss"
        history["max_epochs"] = trainer.max_epochs
        losses = [(e["val_loss"], e["epoch"]) for e in epochs if e.get("val_loss") is not None]
        if losses:
            best_loss, best_epoch = min(losses)
            history["best_epoch"], history["best_val_loss"] = best_epoch, best_loss
        history["lr_reductions"] = [
            {"epoch": b["epoch"], "from": a["lr"], "to": b["lr"]}
            for a, b in itertools.pairwise(epochs)
            if a.get("lr") is not None and b.get("lr") is not None and b["lr"] < a["lr"]
        ]
        for cb in trainer.callbacks:
            if isinstance(cb, EarlyStopping):
                history["early_stopping"] = {
                    "triggered": bool(cb.stopped_epoch),
                    "stopped_epoch": int(cb.stopped_epoch) if cb.stopped_epoch else None,
                    "patience": cb.patience,
                    "wait_count": cb.wait_count,
                    "monitor": cb.monitor,
                }
        atomic_write_json(self.history_path, history)


class ReuseFreedMemory(Callback):
    """Around a ``fit`` on the CPU, keep freed memory in the heap for the next step.

    See :mod:`damage_lightning.heap` (glibc only; ``DAMAGE_LIGHTNING_HEAP=system`` switches it
    off). The settings are undone when ``fit`` ends, also when it fails or is interrupted.
    Every task brings this callback itself (``configure_callbacks``), so a ``Trainer`` built in
    a notebook gets it as well.
    """

    def __init__(self) -> None:
        self._active = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Raise the heap's thresholds for a ``fit`` on the CPU (after the data are loaded)."""
        if stage == "fit" and not self._active and trainer.strategy.root_device.type == "cpu":
            self._active = heap.keep_freed_memory()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give the free memory back and restore the thresholds."""
        self._release()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """The same when ``fit`` fails or is interrupted."""
        self._release()

    def _release(self) -> None:
        if self._active:
            self._active = False
            heap.release_freed_memory()


class AdaptBatchNorm(Callback):
    """Re-estimate the network's BatchNorm statistics on unlabelled target recordings (AdaBN).

    Runs once at the start of ``test`` and ``predict``, after the checkpoint's weights are
    loaded: the windows of ``path`` (read and cut as ``predict`` reads its data) go through the
    DataModule's front end and the network (:func:`damage_lightning.tasks.adapt.adapt_batchnorm`).
    The adapted statistics live in memory for that evaluation only; the checkpoint is not
    rewritten (``export --adapt`` writes an adapted model).

    Args:
        path: a folder of recordings or one recording of the target machine, normal operation.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Adapt before the first test batch."""
        self._adapt(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Adapt before the first predict batch."""
        self._adapt(trainer, pl_module)

    def _adapt(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from damage_lightning.data.order import split_speed
        from damage_lightning.tasks.adapt import adapt_batchnorm

        dm = trainer.datamodule
        device = pl_module.device
        order = bool(dm.hparams.get("order", False))
        spectrograms = (
            dm.spectrogram(b[0].to(device), split_speed(b, order)[1])
            for b in dm.recording_windows(self.path)
        )
        try:
            done = adapt_batchnorm(pl_module, spectrograms)
        except ValueError as exc:
            raise DataValidationError(Problem(str(self.path), "", f"--adapt: {exc}")) from None
        if trainer.is_global_zero:
            print(
                f"adapt: BatchNorm statistics of {done.layers} layers re-estimated on "
                f"{done.windows} windows of {self.path}"
            )
