"""The shared LightningModule: loss, metrics, optimiser and prediction for every architecture.

Architectures subclass :class:`DamageClassifier` and only implement :meth:`build_network`, which
returns a plain ``nn.Module`` mapping spectrograms ``(B, C, F, T)`` to logits ``(B, K)``; that
module is what gets exported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

Stage = Literal["train", "val", "test"]


def check_positive_list(values: Sequence[int], name: str) -> None:
    """Raise ``ValueError`` unless ``values`` is a non-empty list of positive integers.

    Args:
        values: e.g. the channel widths of a network.
        name: the argument's name, for the message.
    """
    if len(values) == 0 or min(values) < 1:
        raise ValueError(
            f"{name} must be a non-empty list of positive integers, got {list(values)}"
        )


def downsample_stride(size: tuple[int, int] | None) -> tuple[int, int]:
    """Stride for one 2x downsampling of a ``(freq, frames)`` map that never empties it.

    Each axis is halved only while it is at least 2 long, so small spectrograms (few frames)
    keep at least one cell; an unknown size (``None``) is assumed large enough for both.

    Args:
        size: the current spatial size, or ``None`` when unknown.

    Returns:
        the stride per axis, 2 or 1.
    """
    if size is None:
        return (2, 2)
    return (2 if size[0] >= 2 else 1, 2 if size[1] >= 2 else 1)


def pooled_size(size: tuple[int, int] | None, stride: tuple[int, int]) -> tuple[int, int] | None:
    """Spatial size after pooling with ``kernel_size == stride`` (floor mode).

    Args:
        size: the spatial size before pooling, or ``None`` when unknown.
        stride: the pooling kernel and stride per axis.
    """
    if size is None:
        return None
    return (size[0] // stride[0], size[1] // stride[1])


def strided_size(size: tuple[int, int] | None, stride: tuple[int, int]) -> tuple[int, int] | None:
    """Spatial size after a padded ("same") convolution or pooling with the given stride.

    Args:
        size: the spatial size before the layer, or ``None`` when unknown.
        stride: the stride per axis.
    """
    if size is None:
        return None
    return ((size[0] - 1) // stride[0] + 1, (size[1] - 1) // stride[1] + 1)


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the run stops at that step.

    The CLI prints the message (which says what to try) and exits with status 1.
    """


NAN_CHECK_INTERVAL = 25


def classifier_head(channels: int, num_classes: int, dropout: float) -> list[nn.Module]:
    """Global average pooling, dropout and the linear layer that every network ends with."""
    return [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Dropout(dropout),
        nn.Linear(channels, num_classes),
    ]


class DamageClassifier(LightningModule):
    """Base classifier of spectrograms: cross-entropy, metrics, Adam(W) with ReduceLROnPlateau.

    Subclasses implement :meth:`build_network` only. The batches reaching the steps are
    ``(spectrogram, label, ...)`` with spectrogram ``(B, C, F, T)``: the DataModule has already
    turned waveforms into spectrograms in ``on_after_batch_transfer``.

    Args:
        num_classes: number of damage classes (linked from the DataModule by the CLI).
        in_channels: number of sensor channels (linked from the DataModule by the CLI).
        input_shape: ``(channels, freq, frames)`` of one spectrogram (linked from the
            DataModule); networks use it to downsample only while the map is large enough.
            ``None`` assumes a large input.
        class_names: names of the classes in output order (linked from the DataModule);
            defaults to ``class_0``, ``class_1``, ...
        optimizer: ``adam`` or ``adamw``.
        lr: initial learning rate.
        weight_decay: weight decay of the optimiser.
        lr_factor: factor by which ReduceLROnPlateau multiplies the learning rate.
        lr_patience: epochs without ``val_loss`` improvement before the learning rate drops.
        min_lr: the learning rate never drops below this.
        use_class_weights: weight the cross-entropy by the DataModule's inverse-frequency
            ``class_weights`` (for imbalanced classes).
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1)``.
        channels_last: keep the network and its inputs in channels-last memory format
            (faster convolutions on recent GPUs).
        compile: run the network through ``torch.compile``; checkpoints and exports still
            hold the plain network.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        input_shape: tuple[int, int, int] | None = None,
        class_names: list[str] | None = None,
        optimizer: Literal["adam", "adamw"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_factor: float = 0.5,
        lr_patience: int = 3,
        min_lr: float = 1e-6,
        use_class_weights: bool = False,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_arguments()

        self.net = self.build_network()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # The compiled wrapper is kept out of the module tree so that the state dict, checkpoints
        # and exports only ever see the plain network.
        object.__setattr__(self, "_compiled_net", None)
        # Filled in setup() from the DataModule; not persistent, so a checkpoint loads into a
        # model built without a DataModule.
        self.register_buffer("class_weights", None, persistent=False)

        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
                "precision": MulticlassPrecision(num_classes, average=None),
                "recall": MulticlassRecall(num_classes, average=None),
                "confmat": MulticlassConfusionMatrix(num_classes),
            }
        )
        # Per-class metrics and the confusion matrix only matter for evaluation.
        self.train_metrics = MetricCollection({"acc": metrics["acc"], "f1": metrics["f1"]}).clone(
            prefix="train_"
        )
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self.val_loss_mean = MeanMetric()
        self.test_loss_mean = MeanMetric()

        self.val_results: dict[str, Any] = {}
        self.test_results: dict[str, Any] = {}

    def _check_arguments(self) -> None:
        hp = self.hparams
        if hp.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {hp.num_classes}")
        if hp.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {hp.in_channels}")
        if hp.input_shape is not None:
            shape = tuple(hp.input_shape)
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(
                    f"input_shape must be (channels, freq, frames) of positive sizes, got {shape}"
                )
            if shape[0] != hp.in_channels:
                raise ValueError(
                    f"input_shape {shape} has {shape[0]} channels but in_channels is "
                    f"{hp.in_channels}"
                )
        if hp.class_names is not None:
            names = list(hp.class_names)
            if len(names) != hp.num_classes:
                raise ValueError(
                    f"class_names has {len(names)} names {names} but num_classes is "
                    f"{hp.num_classes}"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"class_names must be unique, got {names}")
        if not 0.0 <= hp.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {hp.label_smoothing}")
        if hp.lr <= 0 or hp.min_lr < 0:
            raise ValueError(
                f"lr must be positive and min_lr non-negative, got {hp.lr}, {hp.min_lr}"
            )
        if not 0.0 < hp.lr_factor < 1.0:
            raise ValueError(f"lr_factor must be in (0, 1), got {hp.lr_factor}")

    # ------------------------------------------------------------------------------ network
    def build_network(self) -> nn.Module:
        """Build the network mapping spectrograms ``(B, C, F, T)`` to logits ``(B, K)``.

        Subclasses implement this; the hyperparameters (``self.hparams``) are available.

        Returns:
            a plain ``nn.Module`` (scriptable and exportable to ONNX).
        """
        raise TypeError(
            f"{type(self).__name__} does not build a network: a DamageClassifier subclass must "
            "implement build_network() returning an nn.Module that maps spectrograms "
            "(B, C, F, T) to logits (B, num_classes); use CNNClassifier or ResNetClassifier, or "
            "write such a subclass"
        )

    @property
    def class_names(self) -> list[str]:
        """Class names in output order; the metric log keys use the index into this list."""
        names = self.hparams.class_names
        if names is None:
            return [f"class_{i}" for i in range(self.hparams.num_classes)]
        return list(names)

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

    def __getstate__(self) -> dict[str, Any]:
        # A compiled callable does not pickle or deep-copy; it is rebuilt on the next forward.
        state = super().__getstate__()
        state["_compiled_net"] = None
        return state

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of spectrograms ``(B, C, F, T)``.

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

    # ------------------------------------------------------------------------- loss, setup
    def setup(self, stage: str) -> None:
        """Take the class weights from the DataModule when ``use_class_weights`` is on.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        if not self.hparams.use_class_weights or stage == "predict":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        weights = getattr(datamodule, "class_weights", None)
        if weights is None:
            raise RuntimeError(
                "use_class_weights=True needs a DataModule with a `class_weights` tensor "
                "(e.g. DamageDataModule); pass datamodule= to the Trainer or set "
                "use_class_weights=False"
            )
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (self.hparams.num_classes,):
            raise ValueError(
                f"the DataModule's class_weights have shape {tuple(weights.shape)}, expected "
                f"({self.hparams.num_classes},) (one per class)"
            )
        if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
            raise ValueError(
                f"the DataModule's class_weights must be finite and positive, got "
                f"{weights.tolist()}"
            )
        self.class_weights = weights.to(self.device)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy with the optional class weights and label smoothing.

        Args:
            logits: ``(B, num_classes)`` network outputs.
            target: ``(B,)`` class indices.
        """
        weight = self.class_weights
        if weight is not None:
            weight = weight.to(device=logits.device)
        return F.cross_entropy(
            logits.float(),
            target,
            weight=weight,
            label_smoothing=self.hparams.label_smoothing,
        )

    # ------------------------------------------------------------------------------- steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy of one ``(spectrogram, label, ...)`` batch; logs ``train_loss``.

        Args:
            batch: spectrograms ``(B, C, F, T)`` and labels ``(B,)``; further items are ignored.
            batch_idx: index of the batch in the epoch.

        Raises:
            TrainingDivergedError: when the loss is NaN or infinite.
        """
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.loss(logits, y)
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
        batch_size = y.shape[0]
        self.log(
            "train_loss",
            loss.detach(),
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        # Logging the metric objects lets Lightning compute, sync and reset them per epoch.
        self.train_metrics.update(logits.detach().argmax(dim=-1), y)
        self.log_dict(
            self.train_metrics, on_step=False, on_epoch=True, prog_bar=False, batch_size=batch_size
        )
        return loss

    def _eval_step(self, stage: Stage, batch: Any) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.loss(logits, y)
        getattr(self, f"{stage}_loss_mean").update(loss.detach(), y.shape[0])
        getattr(self, f"{stage}_metrics").update(logits.detach().argmax(dim=-1), y)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Loss and metric updates of one validation batch (logged at epoch end).

        Args:
            batch: spectrograms ``(B, C, F, T)`` and labels ``(B,)``; further items are ignored.
            batch_idx: index of the batch.
        """
        return self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Loss and metric updates of one test batch (logged at epoch end).

        Args:
            batch: spectrograms ``(B, C, F, T)`` and labels ``(B,)``; further items are ignored.
            batch_idx: index of the batch.
        """
        return self._eval_step("test", batch)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Predictions of one ``(spectrogram, label, recording, start)`` batch, on the CPU.

        Args:
            batch: spectrograms, labels (``-1`` when unknown), recording indices, window starts.
            batch_idx: index of the batch.
            dataloader_idx: index of the predict loader.

        Returns:
            ``logits``, ``probabilities`` (softmax, float32), ``predicted`` (argmax) and the
            batch's ``label``, ``recording`` and ``start``.
        """
        x, label, recording, start = batch[0], batch[1], batch[2], batch[3]
        logits = self(x).float()
        probabilities = logits.softmax(dim=-1)
        return {
            "logits": logits.cpu(),
            "probabilities": probabilities.cpu(),
            "predicted": probabilities.argmax(dim=-1).cpu(),
            "label": _cpu(label),
            "recording": _cpu(recording),
            "start": _cpu(start),
        }

    # -------------------------------------------------------------------------- epoch ends
    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss``, ``val_acc``, ``val_f1`` and per-class metrics; fill ``val_results``."""
        results = self._evaluation_epoch_end("val")
        if not self.trainer.sanity_checking:
            self.val_results = results

    def on_test_epoch_end(self) -> None:
        """Log ``test_loss``, ``test_acc``, ``test_f1``, per-class metrics; set ``test_results``."""
        self.test_results = self._evaluation_epoch_end("test")

    def _evaluation_epoch_end(self, stage: Stage) -> dict[str, Any]:
        loss_mean: MeanMetric = getattr(self, f"{stage}_loss_mean")
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        # compute() gathers the states of all processes, so every rank logs the same numbers.
        loss = loss_mean.compute()
        computed = metrics.compute()
        loss_mean.reset()
        metrics.reset()

        # Logged values stay on the metrics' device: a distributed sync needs them there.
        precision = computed[f"{stage}_precision"]
        recall = computed[f"{stage}_recall"]
        scalars = {
            f"{stage}_loss": loss,
            f"{stage}_acc": computed[f"{stage}_acc"],
            f"{stage}_f1": computed[f"{stage}_f1"],
        }
        for i in range(self.hparams.num_classes):
            scalars[f"{stage}_precision_{i}"] = precision[i]
            scalars[f"{stage}_recall_{i}"] = recall[i]
        for name, value in scalars.items():
            self.log(
                name,
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=name in (f"{stage}_loss", f"{stage}_acc"),
                sync_dist=True,
            )
        return self._results_dict(
            loss,
            computed[f"{stage}_acc"],
            computed[f"{stage}_f1"],
            precision,
            recall,
            computed[f"{stage}_confmat"],
        )

    def _results_dict(
        self,
        loss: Tensor,
        accuracy: Tensor,
        f1_macro: Tensor,
        precision: Tensor,
        recall: Tensor,
        confmat: Tensor,
    ) -> dict[str, Any]:
        matrix = confmat.long().cpu()
        support = matrix.sum(dim=1)
        precision, recall = precision.float().cpu(), recall.float().cpu()
        per_class = {}
        for i, name in enumerate(self.class_names):
            p, r = float(precision[i]), float(recall[i])
            per_class[name] = {
                "precision": p,
                "recall": r,
                "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0,
                "support": int(support[i]),
            }
        return {
            "loss": _finite_or_none(float(loss)),
            "accuracy": float(accuracy),
            "f1_macro": float(f1_macro),
            "per_class": per_class,
            "confusion_matrix": matrix.tolist(),
        }

    # -------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """Adam or AdamW with ReduceLROnPlateau on ``val_loss``, stepped once per epoch.

        Returns:
            the optimiser and the scheduler configuration Lightning expects.
        """
        hp = self.hparams
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=hp.lr_factor,
            patience=hp.lr_patience,
            min_lr=hp.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": "val_loss",
                "interval": "epoch",
                "frequency": 1,
            },
        }

    # ------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task class and the data facts, so a checkpoint alone rebuilds the model.

        The section is an ``export.spec.ExportSpec``: ``load_from_checkpoint`` and ``export``
        read it (with ``weights_only=True``), and so does a resumed or evaluated run's DataModule.
        """
        from damage_lightning.export.spec import SECTION, ExportSpec

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if getattr(datamodule, "frontend", None) is not None:
            checkpoint[SECTION] = ExportSpec.of(self, datamodule).to_checkpoint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give the DataModule the checkpoint's normalisation (resume, ``test``, ``predict``)."""
        from damage_lightning.export.spec import SECTION

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        section = checkpoint.get(SECTION)
        if isinstance(section, dict) and hasattr(datamodule, "restore_frontend_state"):
            datamodule.restore_frontend_state(
                section.get("frontend_state", {}), section.get("class_names", [])
            )


def _cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, Tensor) else value


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN; a loss that is not a number is written as null.
    return value if math.isfinite(value) else None
