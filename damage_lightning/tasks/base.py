"""The base of every task: hyperparameters, override points, optimiser, speed options, checkpoints.

A task is a LightningModule that owns a plain network (``self.net``, what gets exported), its
loss and its metrics. Subclasses fill the override points in the manner of torchgeo's
``BaseTask``: :meth:`BaseTask.configure_models`, :meth:`BaseTask.configure_losses` and
:meth:`BaseTask.configure_metrics`; ``monitor`` and ``mode`` are class attributes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn

NAN_CHECK_INTERVAL = 25


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the run stops at that step.

    The CLI prints the message (which says what to try) and exits with status 1.
    """


class BaseTask(LightningModule, ABC):
    """A LightningModule around a plain network of spectrograms ``(B, C, F, T)``.

    ``__init__`` saves the hyperparameters of the whole subclass chain, then calls
    :meth:`configure_models` (which must set ``self.net``), :meth:`configure_losses` and
    :meth:`configure_metrics`. The optimiser is Adam or AdamW with ReduceLROnPlateau on
    ``monitor``. Subclasses write the steps.

    Args:
        in_channels: number of sensor channels (linked from the DataModule by the CLI).
        input_shape: ``(channels, freq, frames)`` of one spectrogram (linked from the
            DataModule); networks use it to downsample only while the map is large enough.
            ``None`` assumes a large input.
        optimizer: ``adam`` or ``adamw``.
        lr: initial learning rate.
        weight_decay: weight decay of the optimiser.
        lr_factor: factor by which ReduceLROnPlateau multiplies the learning rate.
        lr_patience: epochs without improvement of ``monitor`` before the learning rate drops.
        min_lr: the learning rate never drops below this.
        channels_last: keep the network and its inputs in channels-last memory format
            (faster convolutions on recent GPUs and CPUs).
        compile: run the network through ``torch.compile``; checkpoints and exports still
            hold the plain network.
    """

    #: The logged metric that the learning-rate schedule (and the shipped callbacks) follow.
    monitor: ClassVar[str] = "val_loss"
    #: Whether ``monitor`` should go down (``min``) or up (``max``).
    mode: ClassVar[Literal["min", "max"]] = "min"
    #: ``__init__`` arguments left out of the saved hyperparameters (derived or fixed ones).
    ignore: ClassVar[Sequence[str]] = ()
    #: Whether the task trains on one (healthy) class; the CLI refuses one-class data otherwise.
    healthy_only: ClassVar[bool] = False

    #: The plain network mapping spectrograms to the task's outputs; set by configure_models.
    net: nn.Module

    def __init__(
        self,
        in_channels: int = 1,
        input_shape: tuple[int, int, int] | None = None,
        optimizer: Literal["adam", "adamw"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_factor: float = 0.5,
        lr_patience: int = 3,
        min_lr: float = 1e-6,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.ignore))
        _check_base_arguments(in_channels, input_shape, lr, min_lr, lr_factor)

        self.configure_models()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # The compiled wrapper is kept out of the module tree so that the state dict, checkpoints
        # and exports only ever see the plain network.
        object.__setattr__(self, "_compiled_net", None)
        self.configure_losses()
        self.configure_metrics()

    # ---------------------------------------------------------------------- override points
    @abstractmethod
    def configure_models(self) -> None:
        """Build ``self.net``, the plain ``nn.Module`` of the task (scriptable, exportable)."""

    def configure_losses(self) -> None:
        """Set up the loss (e.g. ``self.criterion``); the hyperparameters are available."""

    def configure_metrics(self) -> None:
        """Set up the torchmetrics collections; the hyperparameters are available."""

    # ------------------------------------------------------------------------ network, speed
    def _network(self) -> nn.Module:
        # Compiled lazily, once, so that forward() outside a Trainer behaves like inside one.
        if not self.hparams.compile:
            return self.net
        if self._compiled_net is None:
            object.__setattr__(self, "_compiled_net", torch.compile(self.net))
        return self._compiled_net

    def configure_model(self) -> None:
        """Compile the network (when ``compile`` is on) before training or evaluation starts."""
        self._network()

    def configure_callbacks(self) -> list[Any]:
        """The callbacks every task brings: :class:`~damage_lightning.callbacks.ReuseFreedMemory`.

        It keeps freed memory in the heap during a CPU ``fit`` (1.1-1.3x faster training steps
        where activations exceed 32 MiB, :mod:`damage_lightning.heap`), also for a ``Trainer``
        built by hand.
        """
        from damage_lightning.callbacks import ReuseFreedMemory

        return [ReuseFreedMemory()]

    def __getstate__(self) -> dict[str, Any]:
        # A compiled callable does not pickle or deep-copy; it is rebuilt on the next forward.
        state = super().__getstate__()
        state["_compiled_net"] = None
        return state

    def forward(self, x: Tensor) -> Tensor:
        """The network's output for spectrograms ``(B, C, F, T)``.

        Args:
            x: a batch of spectrograms.
        """
        if x.ndim != 4:
            raise ValueError(
                f"expected spectrograms of shape (batch, channels, freq, frames), got "
                f"{tuple(x.shape)}"
            )
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._network()(x)

    def check_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Stop the run with :class:`TrainingDivergedError` when the training loss is NaN/inf.

        Args:
            loss: the training loss of the batch.
            batch_idx: index of the batch in the epoch.
        """
        # Reading the loss on the host waits for the accelerator; on a GPU, check every
        # NAN_CHECK_INTERVAL steps so the check costs nothing measurable (a diverged run then
        # stops within that many steps, not epochs).
        check = loss.device.type == "cpu" or batch_idx % NAN_CHECK_INTERVAL == 0
        if check and not bool(torch.isfinite(loss)):
            raise TrainingDivergedError(
                f"training loss became NaN/inf at epoch {self.current_epoch} step "
                f"{self.global_step}; lower the learning rate (lr={self.hparams.lr}), check "
                "the input data for NaN/inf values, or train in 32-bit precision"
            )

    # ---------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """Adam or AdamW with ReduceLROnPlateau on ``monitor``, stepped once per epoch.

        Returns:
            the optimiser and the scheduler configuration Lightning expects.
        """
        hp = self.hparams
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=self.mode,
            factor=hp.lr_factor,
            patience=hp.lr_patience,
            min_lr=hp.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.monitor,
                "interval": "epoch",
                "frequency": 1,
            },
        }

    def deployable(self, frontend: nn.Module) -> nn.Module:
        """The module that export writes: ``frontend`` and this task's network, waveform in.

        Args:
            frontend: the spectrogram front end the network was trained behind.
        """
        from damage_lightning.export.deployable import DeployableModel

        return DeployableModel(frontend, self.net)

    # --------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task class and the data facts, so a checkpoint alone rebuilds the model.

        The section is an ``export.spec.ExportSpec``: ``load_from_checkpoint`` and ``export``
        read it (with ``weights_only=True``), and so does a resumed or evaluated run's DataModule.

        Args:
            checkpoint: the checkpoint dictionary Lightning is about to save.
        """
        from damage_lightning.export.spec import SECTION, ExportSpec

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if getattr(datamodule, "frontend", None) is not None:
            checkpoint[SECTION] = ExportSpec.of(self, datamodule).to_checkpoint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give the DataModule the checkpoint's normalisation (resume, ``test``, ``predict``).

        Args:
            checkpoint: the checkpoint dictionary Lightning loaded.
        """
        from damage_lightning.export.spec import SECTION

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        section = checkpoint.get(SECTION)
        if isinstance(section, dict) and hasattr(datamodule, "restore_frontend_state"):
            datamodule.restore_frontend_state(
                section.get("frontend_state", {}), section.get("class_names", [])
            )
        if isinstance(section, dict) and hasattr(datamodule, "restore_health_reference"):
            datamodule.restore_health_reference(section.get("health_reference"))


def _check_base_arguments(
    in_channels: int,
    input_shape: Sequence[int] | None,
    lr: float,
    min_lr: float,
    lr_factor: float,
) -> None:
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    if input_shape is not None:
        shape = tuple(input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"input_shape must be (channels, freq, frames) of positive sizes, got {shape}"
            )
        if shape[0] != in_channels:
            raise ValueError(
                f"input_shape {shape} has {shape[0]} channels but in_channels is {in_channels}"
            )
    if lr <= 0 or min_lr < 0:
        raise ValueError(f"lr must be positive and min_lr non-negative, got {lr}, {min_lr}")
    if not 0.0 < lr_factor < 1.0:
        raise ValueError(f"lr_factor must be in (0, 1), got {lr_factor}")
