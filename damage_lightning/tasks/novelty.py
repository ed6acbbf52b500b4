"""Novelty detection trained on healthy data only, with a threshold set by a false-alarm budget.

``NoveltyTask`` scores each window by the squared Mahalanobis distance of its embedding (a
registered backbone, ``spectrum`` by default) from a Gaussian of healthy training windows
(``tasks/novelty_net.py``). The threshold is the conformal quantile, with the finite-sample
correction, of the scores of the validation split: healthy recordings (or groups, or blocks
when there are fewer than three recordings) held out from training. A recording's score is a
quantile of its window scores and has its own conformal threshold over the calibration
recordings. The test reports false alarms on held-out healthy recordings and detection per
damage class, beside the classical reference (PCA + Mahalanobis on log band energies).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from damage_lightning.card import NoveltyCard, ThresholdRecord
from damage_lightning.deploy.novelty import NoveltyRule
from damage_lightning.evaluation.conformal import threshold_record
from damage_lightning.evaluation.detection import ScoredWindows, calibrate, evaluate
from damage_lightning.evaluation.reference import evaluate_reference
from damage_lightning.networks import build_backbone
from damage_lightning.networks.spectrum import SpectrumBackbone
from damage_lightning.tasks.base import BaseTask
from damage_lightning.tasks.novelty_calibration import cross_group_scores
from damage_lightning.tasks.novelty_net import AutoencoderFeatures, NoveltyDetector, NoveltyNet

# The Gaussian of a weightless embedding needs one pass over the training windows and no
# optimiser; Lightning says so at every fit, which tells the user nothing.
warnings.filterwarnings("ignore", message=r".*configure_optimizers` returned `None`")
#: At most this many training windows (the first of the shuffled epoch) fit the Gaussian.
MAX_FIT_WINDOWS = 50_000


class NoveltyTask(BaseTask):
    """A novelty detector: trained on healthy windows, alarms at a calibrated false-alarm rate.

    Batches are those of ``DamageDataModule(healthy_label=...)`` (or of a one-class dataset):
    training windows are healthy; validation windows (healthy, held out by recording, group or
    block) calibrate the thresholds; test windows are held-out healthy and every other class. The
    ``healthy`` class is ``class_names[0]`` (the DataModule lists it first).

    With a backbone that has weights (``cnn``, ``resnet``), the backbone is trained as the
    encoder of an autoencoder of the per-channel centred spectrum, and the Gaussian models its
    code and reconstruction residual; ``val_loss`` is the validation reconstruction error. With
    ``spectrum`` (no weights), one pass over the training windows fits the Gaussian and the fit
    stops after that epoch; ``val_loss`` is the mean validation score per feature.

    Args:
        backbone: a registered backbone name (``spectrum``, ``cnn``, ``resnet``).
        backbone_args: the backbone's own arguments.
        bottleneck: code size of the autoencoder (learned backbones only).
        false_alarm_rate: the window-level false-alarm budget of the threshold, in ``(0, 1)``.
        recording_false_alarm_rate: the recording-level budget (``None``: ``false_alarm_rate``).
        recording_quantile: a recording's score is this quantile of its window scores (0.5:
            the median).
        reference: also evaluate the classical reference at the same false-alarm rates in the
            test (needs a ``DamageDataModule``).
        calibration: ``holdout`` scores the validation split (healthy recordings, groups or
            blocks held out from training: split conformal); ``cross_group`` scores each group
            of the training recordings with a Gaussian fitted without it (cross-conformal over
            ``calibration_folds`` folds, ``tasks/novelty_calibration.py``), for conditions that
            change from group to group, such as speeds.
        calibration_folds: folds of groups for ``cross_group``.
        num_classes: number of labels in the data (linked from the DataModule; only the first,
            healthy, one is trained on).
        class_names: the labels, healthy first (linked from the DataModule).
        **kwargs: the arguments of :class:`~damage_lightning.tasks.base.BaseTask`.
    """

    #: Early stopping and the checkpoint follow the reconstruction (or mean score) on validation.
    monitor: ClassVar[str] = "val_loss"
    mode: ClassVar[Literal["min", "max"]] = "min"
    healthy_only = True

    def __init__(
        self,
        backbone: str = "spectrum",
        backbone_args: dict[str, Any] | None = None,
        bottleneck: int = 8,
        false_alarm_rate: float = 0.01,
        recording_false_alarm_rate: float | None = None,
        recording_quantile: float = 0.5,
        reference: bool = True,
        calibration: Literal["holdout", "cross_group"] = "holdout",
        calibration_folds: int = 10,
        num_classes: int = 1,
        class_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        for name, rate in (
            ("false_alarm_rate", false_alarm_rate),
            ("recording_false_alarm_rate", recording_false_alarm_rate),
        ):
            if rate is not None and not 0.0 < rate < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {rate}")
        if not 0.0 <= recording_quantile <= 1.0:
            raise ValueError(f"recording_quantile must lie in [0, 1], got {recording_quantile}")
        if calibration_folds < 2:
            raise ValueError(f"calibration_folds must be at least 2, got {calibration_folds}")
        if bottleneck < 1:
            raise ValueError(f"bottleneck must be at least 1, got {bottleneck}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names {class_names} do not match num_classes {num_classes}")
        self.backbone_name = backbone
        self.backbone_args = dict(backbone_args or {})
        super().__init__(**kwargs)
        self.automatic_optimization = self.trainable
        self._fit_features: list[tuple[Tensor, Tensor]] = []
        self._cross_scores: tuple[np.ndarray, np.ndarray] | None = None
        self._outputs: list[tuple[Tensor, ...]] = []
        self._losses: list[Tensor] = []
        #: The test's thresholds and results (``model_info.json``'s ``novelty``), after ``test``.
        self.novelty_results: NoveltyCard | None = None
        #: Per test window: ``recording`` (index), ``label`` (index), ``start``, ``score``,
        #: ``reference_score`` (when the reference ran), after ``test``.
        self.test_scores: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------------- override points
    def configure_models(self) -> None:
        """``self.net``: the backbone's embedding (an autoencoder's if it learns), a Gaussian."""
        hp = self.hparams
        if hp.input_shape is None:
            raise ValueError(
                "NoveltyTask needs input_shape (channels, freq, frames): the CLI links it from "
                "the DataModule; in code pass DamageDataModule(...).input_shape"
            )
        backbone = build_backbone(
            self.backbone_name, hp.in_channels, hp.input_shape, **self.backbone_args
        )
        features: nn.Module = backbone
        if any(p.requires_grad for p in backbone.parameters()):
            target = SpectrumBackbone(hp.in_channels, hp.input_shape)
            features = AutoencoderFeatures(backbone, target, hp.bottleneck)
        self.net = NoveltyNet(features)

    @property
    def trainable(self) -> bool:
        """Whether the embedding has weights to train (else one pass fits the Gaussian)."""
        return any(p.requires_grad for p in self.net.features.parameters())

    def configure_optimizers(self) -> Any:
        """The base optimiser for a learned embedding; none for a weightless one."""
        return super().configure_optimizers() if self.trainable else None

    @property
    def healthy_label(self) -> str:
        """The label of the data trained on."""
        names = self.hparams.class_names
        return names[0] if names else "healthy"

    @property
    def class_names(self) -> list[str]:
        """The labels, healthy first (index = the batches' label)."""
        names = self.hparams.class_names
        return list(names) if names else [f"class_{i}" for i in range(self.hparams.num_classes)]

    # -------------------------------------------------------------------------------- steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """Autoencoder loss of a learned embedding; features for the Gaussian otherwise.

        Args:
            batch: healthy spectrograms ``(B, C, F, T)`` first; further items are ignored.
            batch_idx: index of the batch in the epoch.
        """
        x = batch[0]
        if not self.trainable:
            if sum(len(f) for f, _ in self._fit_features) < MAX_FIT_WINDOWS:
                features = self.net.features(x).detach().double().cpu()
                self._fit_features.append((features, _recordings(batch)))
            # Lightning counts training steps by optimiser steps, and checkpoints are saved only
            # after a step: the stand-in optimiser it gives a task without weights is stepped.
            self.optimizers().step()
            return None
        loss = self._reconstruction_loss(x)
        self.check_finite(loss, batch_idx)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=x.shape[0],
            sync_dist=True,
        )
        return loss

    def _reconstruction_loss(self, x: Tensor) -> Tensor:
        _, spectrum, reconstruction = self.net.features.parts(x)
        return F.mse_loss(reconstruction.float(), spectrum.float())

    def on_train_epoch_end(self) -> None:
        """A weightless embedding is fitted after one epoch: stop the fit there."""
        if not self.trainable:
            self.trainer.should_stop = True

    def on_validation_epoch_start(self) -> None:
        """Fit the Gaussian to the training windows' embeddings with the current weights."""
        if self.trainer.sanity_checking:
            return
        parts = self._fit_features or self._embed(self.trainer.train_dataloader)
        self._fit_features = []
        features = torch.cat([f for f, _ in parts])
        self.net.score.fit(features)
        if self.hparams.calibration == "cross_group":
            recordings = torch.cat([r for _, r in parts]).numpy()
            groups = _group_keys(getattr(self.trainer, "datamodule", None), recordings)
            scores = cross_group_scores(
                features, recordings, groups, self.hparams.calibration_folds, 0
            )
            self._cross_scores = (scores, recordings)

    @torch.no_grad()
    def _embed(self, loader: Any) -> list[tuple[Tensor, Tensor]]:
        parts, n = [], 0
        for batch in loader:
            batch = self.trainer.strategy.batch_to_device(batch, self.device)
            parts.append((self.net.features(batch[0]).double().cpu(), _recordings(batch)))
            n += len(parts[-1][0])
            if n >= MAX_FIT_WINDOWS:
                break
        return parts

    def _collect(self, batch: Any) -> Tensor:
        if len(batch) < 3:
            raise ValueError(
                "NoveltyTask needs the recording of every validation and test window (batches "
                "(spectrogram, label, recording, ...)): DamageDataModule gives them for "
                "novelty data (healthy_label set, or one class)"
            )
        x = batch[0]
        score = self(x).float()
        self._outputs.append((score.cpu(), batch[1].cpu(), batch[2].cpu(), *_starts(batch)))
        if self.trainable:
            self._losses.append(self._reconstruction_loss(x).detach().cpu())
        return score

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Score healthy calibration windows (thresholds are set at the epoch end).

        Args:
            batch: spectrograms, labels, recordings, starts.
            batch_idx: index of the batch.
        """
        return self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        """Calibrate the window and recording thresholds; log ``val_loss``."""
        outputs, losses = self._outputs, self._losses
        self._outputs, self._losses = [], []
        if self.trainer.sanity_checking or not outputs:
            if not self.trainer.sanity_checking:
                raise ValueError(
                    "the novelty threshold is calibrated on healthy validation windows, and "
                    "there are none: set data.val_fraction above 0"
                )
            return
        scores = torch.cat([o[0] for o in outputs]).double().numpy()
        recordings = torch.cat([o[2] for o in outputs]).numpy()
        val_mean = float(scores.mean())
        if self._cross_scores is not None:
            scores, recordings = self._cross_scores
        cal = ScoredWindows(scores, np.zeros(len(scores), dtype=np.int64), recordings)
        hp = self.hparams
        window, recording = calibrate(
            cal, hp.false_alarm_rate, self.recording_false_alarm_rate, hp.recording_quantile
        )
        datamodule = getattr(self.trainer, "datamodule", None)
        block = getattr(getattr(datamodule, "plan", None), "strategy", "") == "block"
        unit = 2.0 if self._cross_scores is not None else float(block)
        net = self.net
        net.threshold.fill_(window.threshold)
        net.recording_threshold.fill_(recording.threshold)
        values = [window.n, window.rank, recording.n, recording.rank, unit]
        net.calibration.copy_(torch.tensor(values, dtype=torch.float64))
        if losses:
            val_loss = torch.stack(losses).mean()
        else:
            val_loss = torch.tensor(val_mean / net.score.mean.numel())
        self.log("val_loss", val_loss.float(), prog_bar=True)
        self.log("val_threshold", float(window.threshold))

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Score test windows (healthy held out, and every other class).

        Args:
            batch: spectrograms, labels, recordings, starts.
            batch_idx: index of the batch.
        """
        return self._collect(batch)

    def on_test_epoch_end(self) -> None:
        """Evaluate the detector (and the reference) at the calibrated thresholds."""
        outputs, self._outputs, self._losses = self._outputs, [], []
        if not outputs:
            return
        scored = ScoredWindows(
            torch.cat([o[0] for o in outputs]).double().numpy(),
            torch.cat([o[1] for o in outputs]).numpy(),
            torch.cat([o[2] for o in outputs]).numpy(),
        )
        names, q = self.class_names, self.hparams.recording_quantile
        window, recording = self.thresholds()
        results = evaluate(self.detector_name, scored, window, recording, q, names)
        self.test_scores = {
            "recording": scored.recordings,
            "label": scored.labels,
            "start": torch.cat([o[3] for o in outputs]).numpy(),
            "score": scored.scores,
        }
        reference = None
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams.reference and hasattr(datamodule, "waveform_windows"):
            reference, ref_scores = evaluate_reference(
                datamodule.waveform_windows,
                self.hparams.false_alarm_rate,
                self.recording_false_alarm_rate,
                q,
                names,
                MAX_FIT_WINDOWS,
            )
            self.test_scores["reference_score"] = ref_scores
        n_cal, n_rec = int(self.net.calibration[0]), int(self.net.calibration[2])
        self.novelty_results = NoveltyCard(
            healthy_label=self.healthy_label,
            detector=self.detector_name,
            decision_rule=self.decision_rule(),
            recording_quantile=float(q),
            calibration_unit=self.calibration_unit,
            calibration_recordings=n_rec,
            calibration_windows=n_cal,
            window_threshold=window,
            recording_threshold=recording,
            test=results,
            reference=reference,
        )
        for level in ("window", "recording"):
            result = getattr(results, level)
            if result.false_alarm_rate is not None:
                self.log(f"test_{level}_false_alarm_rate", float(result.false_alarm_rate))
            if result.roc_auc is not None:
                self.log(f"test_{level}_auc", float(result.roc_auc))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Scores and alarms of one ``(spectrogram, label, recording, start)`` batch.

        Args:
            batch: spectrograms, labels (``-1`` when unknown), recording indices, window starts.
            batch_idx: index of the batch.
            dataloader_idx: index of the predict loader.
        """
        score = self(batch[0]).float()
        return {
            "score": score.cpu(),
            "alarm": (score > self.net.threshold).cpu(),
            "label": batch[1].cpu(),
            "recording": batch[2].cpu(),
            "start": batch[3].cpu(),
        }

    # ----------------------------------------------------------------- thresholds, export
    @property
    def recording_false_alarm_rate(self) -> float:
        """The recording-level budget (the window budget unless set)."""
        rate = self.hparams.recording_false_alarm_rate
        return float(self.hparams.false_alarm_rate if rate is None else rate)

    def thresholds(self) -> tuple[ThresholdRecord, ThresholdRecord]:
        """The calibrated window and recording thresholds, as the network's buffers hold them.

        Raises:
            RuntimeError: before calibration (no validation epoch has run).
        """
        n_w, k_w, n_r, k_r = (int(v) for v in self.net.calibration.tolist()[:4])
        if n_w == 0 or not bool(torch.isfinite(self.net.threshold)):
            raise RuntimeError("the novelty detector is not calibrated: fit it first")
        return (
            threshold_record(float(self.net.threshold), self.hparams.false_alarm_rate, n_w, k_w),
            threshold_record(
                float(self.net.recording_threshold), self.recording_false_alarm_rate, n_r, k_r
            ),
        )

    @property
    def calibration_unit(self) -> str:
        """How the thresholds were calibrated: ``recording``, ``block`` or ``cross_group``.

        ``recording``: held-out healthy recordings or groups; ``block``: held-out blocks of
        recordings; ``cross_group``: training recordings scored without their fold of groups.
        """
        return ("recording", "block", "cross_group")[int(self.net.calibration[4])]

    @property
    def detector_name(self) -> str:
        """What scores the windows, in words."""
        if self.trainable:
            return (
                f"Mahalanobis distance (Ledoit-Wolf) on the code and reconstruction residual of "
                f"a {self.backbone_name} autoencoder of the log spectrum"
            )
        return (
            f"Mahalanobis distance (Ledoit-Wolf) on {self.backbone_name} embeddings (per-channel "
            "centred log spectrum)"
        )

    def decision_rule(self) -> str:
        """The window and recording rule in words, with the thresholds."""
        window, recording = self.thresholds()
        q = self.hparams.recording_quantile
        which = "median" if q == 0.5 else f"{q:g} quantile"
        return (
            f"a window alarms when its score exceeds {window.threshold:.6g}; a recording alarms "
            f"when the {which} of its window scores exceeds {recording.threshold:.6g}"
        )

    def novelty_rule(self) -> NoveltyRule:
        """The decision rule as the export metadata and the gateway carry it."""
        window, recording = self.thresholds()
        return NoveltyRule(
            threshold=window.threshold,
            recording_threshold=recording.threshold,
            recording_quantile=float(self.hparams.recording_quantile),
            false_alarm_rate=window.false_alarm_rate,
            recording_false_alarm_rate=recording.false_alarm_rate,
            healthy_label=self.healthy_label,
            decision_rule=self.decision_rule(),
            calibration={
                "windows": window.n,
                "recordings": recording.n,
                "window_bound": window.bound,
                "recording_bound": recording.bound,
                "unit": self.calibration_unit,
            },
        )

    def deployable(self, frontend: nn.Module) -> NoveltyDetector:
        """Waveform in, ``score`` and ``alarm`` out, with the decision rule for the metadata.

        Args:
            frontend: the spectrogram front end.
        """
        return NoveltyDetector(frontend, self.net, self.novelty_rule().to_metadata())


def _recordings(batch: Any) -> Tensor:
    # Training batches of novelty data carry their recordings; others count as one recording.
    if len(batch) > 2:
        return batch[2].detach().cpu()
    return torch.zeros(len(batch[0]), dtype=torch.long)


def _group_keys(datamodule: Any, recordings: np.ndarray) -> list[str]:
    """The group of every recording index (its own index when the data name no groups)."""
    keys = getattr(datamodule, "group_keys", None)
    if callable(keys):
        return keys()
    return [str(i) for i in range(int(recordings.max()) + 1)]


def _starts(batch: Any) -> tuple[Tensor, ...]:
    return (batch[3].cpu(),) if len(batch) > 3 else (torch.zeros(len(batch[0]), dtype=torch.long),)
