"""Classification of spectrograms: a backbone with a linear head, cross-entropy, torchmetrics.

``ClassificationTask(backbone="resnet", backbone_args={...})`` trains any registered backbone
(``damage_lightning.networks``); ``CNNClassifier`` and ``ResNetClassifier`` are this task with
the backbone fixed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from damage_lightning.deploy.decision import Aggregation, check_abstain, check_aggregation
from damage_lightning.networks import build_backbone
from damage_lightning.tasks.base import BaseTask
from damage_lightning.tasks.verdicts import VerdictMixin

Stage = Literal["train", "val", "test"]


def classification_head(in_features: int, num_classes: int, dropout: float) -> list[nn.Module]:
    """Dropout and the linear layer that turn an embedding ``(B, in_features)`` into logits.

    Args:
        in_features: size of the backbone's embedding.
        num_classes: number of logits.
        dropout: dropout probability before the linear layer.
    """
    return [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]


class CrossEntropy(nn.Module):
    """Cross-entropy in float32 with optional class weights and label smoothing.

    The weights are a non-persistent buffer: they are a fact of the training data (set in
    ``ClassificationTask.setup``), so a checkpoint loads into a model built without a DataModule.

    Args:
        label_smoothing: label smoothing, in ``[0, 1)``.
    """

    weight: Tensor | None

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", None, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean (weighted) cross-entropy.

        Args:
            logits: ``(B, num_classes)`` network outputs.
            target: ``(B,)`` class indices.
        """
        return F.cross_entropy(
            logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing
        )


class ClassificationTask(VerdictMixin, BaseTask):
    """Classifier of spectrograms: backbone + dropout + linear head, trained with cross-entropy.

    The batches reaching the steps are ``(spectrogram, label, ...)`` with spectrogram
    ``(B, C, F, T)``: the DataModule has already turned waveforms into spectrograms in
    ``on_after_batch_transfer``. Logged: ``train_loss``, ``train_acc``, ``train_f1``; per
    evaluation stage ``<stage>_loss``, ``_acc``, ``_f1`` and ``_precision_<i>``/``_recall_<i>``
    per class index ``i``. ``val_results``/``test_results`` hold the last epoch's numbers as
    plain Python, keyed by class name.

    Verdicts are per recording: the test split's windows are decided per recording (and per
    group) with ``aggregation`` (``deploy.decision``), scored, and logged as
    ``test_acc_recording``/``test_f1_recording``; ``test_results["recording"]`` holds them, the
    worst-first table and the coverage curve. After training, :meth:`calibrate` fits a
    temperature on the validation split (``calibrate``); it is a buffer of the checkpoint,
    divides the logits of the exported model, and ``test_results["calibration"]`` gives ECE,
    Brier score and NLL before and after. With ``abstain`` a recording (or window) whose
    calibrated confidence is below the floor is ``unknown``, in ``predict`` and in the export.

    Args:
        backbone: a registered backbone name (``cnn``, ``resnet``; see
            ``damage_lightning.networks.register_backbone``).
        backbone_args: the backbone's own arguments, e.g. ``{"widths": [32, 64]}``.
        dropout: dropout probability before the linear head.
        num_classes: number of damage classes (linked from the DataModule by the CLI).
        class_names: names of the classes in output order (linked from the DataModule);
            defaults to ``class_0``, ``class_1``, ...
        use_class_weights: weight the cross-entropy by the DataModule's inverse-frequency
            class weights (for imbalanced classes).
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1)``.
        aggregation: how a recording's windows are decided: ``mean_log_prob`` (normalised
            geometric mean of the window probabilities), ``mean_prob`` or ``vote``.
        abstain: calibrated probability floor: a recording (or window) whose confidence is
            below it is ``unknown`` instead of its top class; ``None`` never abstains.
        calibrate: fit temperature scaling on the validation split after training.
        abstain_distance: a feature-distance gate: after training, fit the class means and
            shared covariance of the training windows' embeddings; a recording whose mean
            (squared Mahalanobis) distance to the nearest class exceeds that of every
            validation recording is ``unknown``. Catches states absent from training, which
            the probability floor alone does not (they look confidently like a neighbour).
        **kwargs: the arguments of :class:`~damage_lightning.tasks.base.BaseTask`
            (``in_channels``, ``input_shape``, ``lr``, ``optimizer``, ...).
    """

    def __init__(
        self,
        backbone: str = "cnn",
        backbone_args: dict[str, Any] | None = None,
        dropout: float = 0.3,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        use_class_weights: bool = False,
        label_smoothing: float = 0.0,
        aggregation: Aggregation = "mean_log_prob",
        abstain: float | None = None,
        calibrate: bool = True,
        abstain_distance: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_classification_arguments(dropout, num_classes, class_names, label_smoothing)
        check_aggregation(aggregation)
        check_abstain(abstain)
        # Kept as attributes (as torchgeo keeps `weights`): subclasses that fix the backbone
        # leave these out of their saved hyperparameters (see `ignore`).
        self.backbone_name = backbone
        self.backbone_args = dict(backbone_args or {})
        super().__init__(**kwargs)
        #: Temperature dividing the logits (1 until :meth:`calibrate`); saved in checkpoints.
        self.register_buffer("temperature", torch.ones(()))
        self.val_results: dict[str, Any] = {}
        self.test_results: dict[str, Any] = {}
        #: What :meth:`calibrate` fitted (``None`` before).
        self.calibration_fit: dict[str, Any] | None = None
        #: What :meth:`fit_distance_gate` fitted (``None`` before).
        self.distance_fit: dict[str, Any] | None = None
        if abstain_distance:
            width = self._embedding_width()
            k = self.hparams.num_classes
            self.register_buffer("feature_means", torch.zeros(k, width))
            self.register_buffer("feature_precision", torch.zeros(width, width))
            # Infinite until fitted: nothing is unknown by distance.
            self.register_buffer("distance_threshold", torch.tensor(float("inf")))
        self._test_outputs: list[tuple[Tensor, Tensor, Tensor]] = []

    # ---------------------------------------------------------------------- override points
    def configure_models(self) -> None:
        """``self.net``: the backbone's layers followed by dropout and the linear head."""
        hp = self.hparams
        backbone = build_backbone(
            self.backbone_name, hp.in_channels, hp.input_shape, **self.backbone_args
        )
        head = classification_head(backbone.out_features, hp.num_classes, hp.dropout)
        # A Sequential backbone is spliced in: one flat Sequential keeps the layer indices, and
        # so the state-dict keys, of checkpoints written before backbones were their own modules.
        body = list(backbone) if isinstance(backbone, nn.Sequential) else [backbone]
        self.net = nn.Sequential(*body, *head)

    def configure_losses(self) -> None:
        """``self.criterion``: cross-entropy with label smoothing (class weights come in setup)."""
        self.criterion = CrossEntropy(self.hparams.label_smoothing)

    def configure_metrics(self) -> None:
        """Accuracy, macro F1, per-class precision/recall, confusion matrix; loss means."""
        num_classes = self.hparams.num_classes
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

    # ------------------------------------------------------------------------ names, weights
    @property
    def class_names(self) -> list[str]:
        """Class names in output order; the metric log keys use the index into this list."""
        names = self.hparams.class_names
        if names is None:
            return [f"class_{i}" for i in range(self.hparams.num_classes)]
        return list(names)

    @property
    def class_weights(self) -> Tensor | None:
        """The cross-entropy's class weights (from the DataModule in ``setup``), or ``None``."""
        return getattr(self.criterion, "weight", None)

    def setup(self, stage: str) -> None:
        """Take the class weights from the DataModule when ``use_class_weights`` is on.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        if not self.hparams.use_class_weights or stage == "predict":
            return
        weights = _datamodule_class_weights(getattr(self.trainer, "datamodule", None))
        if weights is None:
            raise RuntimeError(
                "use_class_weights=True needs class weights from the DataModule: with "
                "DamageDataModule set data.class_weights true (it computes them from the "
                "training windows); pass datamodule= to the Trainer, or set "
                "use_class_weights=False"
            )
        weights = weights.detach().to(dtype=torch.float32)
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
        self.criterion.weight = weights.to(self.device)

    # -------------------------------------------------------------------------------- steps
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
        loss = self.criterion(logits, y)
        self.check_finite(loss, batch_idx)
        batch_size = y.shape[0]
        self.log(
            "train_loss",
            loss,
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
        gated = stage == "test" and self.hparams.abstain_distance
        if gated:
            features = self.embed(x)
            logits = self.net[-1](features)
        else:
            logits = self(x)
        loss = self.criterion(logits, y)
        getattr(self, f"{stage}_loss_mean").update(loss.detach(), y.shape[0])
        getattr(self, f"{stage}_metrics").update(logits.detach().argmax(dim=-1), y)
        if stage == "test" and len(batch) > 2:
            # Raw logits: the calibration figures compare T = 1 with the fitted temperature.
            distance = self.distance(features) if gated else torch.zeros(len(y))
            self._test_outputs.append(
                (logits.detach().float().cpu(), y.cpu(), batch[2].cpu(), distance.detach().cpu())
            )
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
            ``logits`` (divided by the temperature), ``probabilities`` (their softmax, float32),
            ``predicted`` (argmax) and the batch's ``label``, ``recording`` and ``start``.
        """
        x, label, recording, start = batch[0], batch[1], batch[2], batch[3]
        distance = None
        if self.hparams.abstain_distance:
            features = self.embed(x)
            logits = self.net[-1](features).float() / self.temperature
            distance = self.distance(features)
        else:
            logits = self(x).float() / self.temperature
        probabilities = logits.softmax(dim=-1)
        out = {
            "logits": logits.cpu(),
            "probabilities": probabilities.cpu(),
            "predicted": probabilities.argmax(dim=-1).cpu(),
            "label": _cpu(label),
            "recording": _cpu(recording),
            "start": _cpu(start),
        }
        if distance is not None:
            out["distance"] = distance.cpu()
        return out

    # --------------------------------------------------------------------------- epoch ends
    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss``, ``val_acc``, ``val_f1`` and per-class metrics; fill ``val_results``."""
        results = self._evaluation_epoch_end("val")
        if not self.trainer.sanity_checking:
            self.val_results = results

    def on_test_epoch_start(self) -> None:
        """Start collecting the test windows' logits, labels and recordings."""
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        """Log window- and recording-level test metrics; set ``test_results``.

        ``test_results`` adds ``calibration`` (ECE, Brier, NLL and reliability bins before and
        after the temperature) and ``recording`` (per-recording and per-group metrics with the
        aggregation rule and abstain floor, the worst-first table, the coverage curve) when the
        test batches carry their recordings.
        """
        results = self._evaluation_epoch_end("test")
        if self._test_outputs:
            results.update(self._verdicts())
            recording = results["recording"]["recording"]
            for name, value in (
                ("test_acc_recording", recording["accuracy"]),
                ("test_f1_recording", recording["f1_macro"]),
            ):
                self.log(name, value, on_step=False, on_epoch=True, prog_bar=False)
        self._test_outputs = []
        self.test_results = results

    def _verdicts(self) -> dict[str, Any]:
        from damage_lightning.evaluation.calibration import calibration_summary, softmax
        from damage_lightning.evaluation.recording import evaluate_recordings

        logits, labels, recordings, distances = (
            self._gathered(torch.cat([o[i] for o in self._test_outputs])) for i in range(4)
        )
        threshold = self.gate_threshold
        temperature = float(self.temperature)
        datamodule = getattr(self.trainer, "datamodule", None)
        specs = getattr(getattr(datamodule, "dataset", None), "recordings", None)
        names = [r.relpath for r in specs] if specs else None
        if names is None or int(recordings.max()) >= len(names):
            names = [f"recording_{i}" for i in range(int(recordings.max()) + 1)]
            groups = None
        else:
            groups = [r.group for r in specs]
        recording = evaluate_recordings(
            softmax(logits, temperature),
            labels,
            recordings,
            names,
            self.class_names,
            rule=self.hparams.aggregation,
            abstain=self.hparams.abstain,
            groups=groups,
            distances=distances if threshold is not None else None,
            distance_threshold=threshold,
        )
        if self.distance_fit is not None:
            recording["distance_fit"] = self.distance_fit
        calibration = calibration_summary(logits, labels, temperature)
        calibration["fit"] = self.calibration_fit
        return {"calibration": calibration, "recording": recording}

    # ----------------------------------------------------------------------------- export
    def deployable(self, frontend: nn.Module) -> nn.Module:
        """Front end, network and temperature in one module (window ``unknown`` with abstain).

        Args:
            frontend: the spectrogram front end the network was trained behind.
        """
        from damage_lightning.deploy.metadata import (
            ABSTAIN_KEY,
            AGGREGATION_KEY,
            DISTANCE_THRESHOLD_KEY,
            TEMPERATURE_KEY,
        )
        from damage_lightning.export.deployable import (
            AbstainingModel,
            DeployableModel,
            DistanceGatedModel,
        )

        temperature = float(self.temperature)
        abstain = self.hparams.abstain
        threshold = self.gate_threshold
        if threshold is not None:
            module = DistanceGatedModel(
                frontend,
                self.net,
                temperature=temperature,
                abstain=abstain,
                means=self.feature_means,
                precision=self.feature_precision,
                threshold=threshold,
            )
        elif abstain is None:
            module = DeployableModel(frontend, self.net, temperature=temperature)
        else:
            module = AbstainingModel(frontend, self.net, temperature=temperature, abstain=abstain)
        module.metadata_extra = {
            AGGREGATION_KEY: self.hparams.aggregation,
            ABSTAIN_KEY: abstain,
            TEMPERATURE_KEY: temperature,
            DISTANCE_THRESHOLD_KEY: threshold,
        }
        return module

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before calibration existed load with temperature 1.

        Args:
            checkpoint: the checkpoint dictionary Lightning loaded.
        """
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            state.setdefault("temperature", torch.ones(()))
        super().on_load_checkpoint(checkpoint)

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


def _check_classification_arguments(
    dropout: float, num_classes: int, class_names: list[str] | None, label_smoothing: float
) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if class_names is not None:
        names = list(class_names)
        if len(names) != num_classes:
            raise ValueError(
                f"class_names has {len(names)} names {names} but num_classes is {num_classes}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique, got {names}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def _datamodule_class_weights(datamodule: Any) -> Tensor | None:
    # The DataModule's weights are a method (class_weight_tensor) or, in older DataModules and
    # hand-written ones, a `class_weights` tensor attribute.
    method = getattr(datamodule, "class_weight_tensor", None)
    if callable(method):
        weights = method()
    else:
        weights = getattr(datamodule, "class_weights", None)
    return weights if isinstance(weights, Tensor) else None


def _cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, Tensor) else value


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN; a loss that is not a number is written as null.
    return value if math.isfinite(value) else None
