"""Verdict helpers of the classification task: calibration and the feature-distance gate.

:class:`VerdictMixin` is mixed into :class:`~damage_lightning.tasks.classification
.ClassificationTask`: it fits the temperature on the validation split (:meth:`calibrate`), the
class means, shared covariance and threshold of the distance gate (:meth:`fit_distance_gate`),
and gathers the test windows of every rank for the recording-level verdicts. It expects the
task's ``net`` (an ``nn.Sequential`` ending in its linear head, for the gate), ``temperature``
buffer and, with ``abstain_distance``, the ``feature_means``/``feature_precision``/
``distance_threshold`` buffers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from damage_lightning.data.order import split_speed


class VerdictMixin:
    """Calibration and distance-gate fitting for a classification task (see the module)."""

    net: nn.Module
    temperature: Tensor
    feature_means: Tensor
    feature_precision: Tensor
    distance_threshold: Tensor
    hparams: Any
    calibration_fit: dict[str, Any] | None
    distance_fit: dict[str, Any] | None

    def _gathered(self, values: Tensor) -> np.ndarray:
        # Every rank tested its share of the windows; the verdicts need all of them. Shares may
        # differ in length, and all_gather needs equal shapes: pad to the longest, then trim.
        if self.trainer is None or self.trainer.world_size <= 1:
            return values.cpu().numpy()
        values = values.to(self.device)
        sizes = self.all_gather(torch.tensor(len(values), device=self.device)).flatten()
        padded = values.new_zeros((int(sizes.max()), *values.shape[1:]))
        padded[: len(values)] = values
        gathered = self.all_gather(padded)
        parts = [gathered[rank, : int(n)] for rank, n in enumerate(sizes.tolist())]
        return torch.cat(parts).cpu().numpy()

    # ---------------------------------------------------------------------------- calibration
    @torch.no_grad()
    def validation_logits(self, datamodule: Any) -> tuple[np.ndarray, np.ndarray]:
        """The network's raw logits and the labels of every validation window.

        Args:
            datamodule: a DamageDataModule set up for fit (its front end fitted).
        """
        from damage_lightning.export.deployable import device_of

        device = self.temperature.device
        frontend_device = device_of(datamodule.frontend)
        was_training = self.training
        self.eval()
        logits, labels = [], []
        try:
            for batch in datamodule.val_dataloader():
                batch = [b.to(frontend_device) if isinstance(b, Tensor) else b for b in batch]
                x, y = datamodule.on_after_batch_transfer(batch, 0)[:2]
                logits.append(self(x.to(device)).float().cpu())
                labels.append(y.cpu())
        finally:
            self.train(was_training)
        if not logits:
            raise ValueError("calibration needs validation windows; the validation split is empty")
        return torch.cat(logits).numpy(), torch.cat(labels).numpy()

    def calibrate(self, datamodule: Any) -> dict[str, Any]:
        """Fit the temperature on the validation split; set the buffer; return what was fitted.

        The network must hold the weights to be deployed (the best checkpoint's).

        Args:
            datamodule: the DamageDataModule the task was trained on.

        Returns:
            ``temperature``, ``val_windows`` and the validation NLL ``val_nll_before`` and
            ``val_nll_after``.
        """
        from damage_lightning.evaluation.calibration import fit_temperature, nll

        logits, labels = self.validation_logits(datamodule)
        temperature = fit_temperature(logits, labels)
        self.temperature.fill_(temperature)
        self.calibration_fit = {
            "temperature": temperature,
            "split": "val",
            "val_windows": len(labels),
            "val_nll_before": nll(logits, labels, 1.0),
            "val_nll_after": nll(logits, labels, temperature),
        }
        return self.calibration_fit

    # ------------------------------------------------------------------------ distance gate
    def _embedding_width(self) -> int:
        net = self.net
        if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
            raise ValueError(
                "abstain_distance needs a network that is an nn.Sequential ending in its linear "
                f"head; {type(self).__name__} builds {type(net).__name__}"
            )
        return int(net[-1].in_features)

    def embed(self, x: Tensor) -> Tensor:
        """The network's embedding of spectrograms ``(B, C, F, T)``: all layers but the head."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net[:-1](x)

    def distance(self, features: Tensor) -> Tensor:
        """Squared Mahalanobis distance of embeddings to the nearest training class mean."""
        from damage_lightning.export.deployable import min_mahalanobis

        return min_mahalanobis(features, self.feature_means, self.feature_precision)

    @property
    def gate_threshold(self) -> float | None:
        """The distance gate's threshold once fitted, else ``None``."""
        if not self.hparams.abstain_distance:
            return None
        value = float(self.distance_threshold)
        return value if math.isfinite(value) else None

    @torch.no_grad()
    def _split_embeddings(self, datamodule: Any, split: str) -> tuple[Tensor, Tensor, Tensor]:
        from damage_lightning.export.deployable import device_of

        device = self.temperature.device
        frontend_device = device_of(datamodule.frontend)
        was_training = self.training
        self.eval()
        feats, labels, recs = [], [], []
        try:
            order = bool(datamodule.hparams.get("order", False))
            for batch in datamodule.waveform_windows(split):
                (wave, y, rec, _), rpm = split_speed(batch, order)
                rpm = None if rpm is None else rpm.to(frontend_device)
                x = datamodule.frontend(wave.to(frontend_device), rpm).to(device)
                feats.append(self.embed(x).float())
                labels.append(y.to(device))
                recs.append(rec.to(device))
        finally:
            self.train(was_training)
        if not feats:
            raise ValueError(f"the distance gate needs {split} windows; the {split} split is empty")
        return torch.cat(feats), torch.cat(labels), torch.cat(recs)

    def fit_distance_gate(self, datamodule: Any) -> dict[str, Any]:
        """Fit class means, shared covariance and threshold of the distance gate.

        Means and covariance come from the training windows' embeddings (the covariance is
        shrunk by ``1e-3`` of its mean variance towards a multiple of the identity, so it is
        invertible even with fewer windows than dimensions). The threshold is the largest mean
        distance of a validation recording (plus 0.1 %): a new recording of a known class is
        then further out than every validation recording with probability about
        ``1 / (n_val + 1)``.

        Args:
            datamodule: the DamageDataModule the task was trained on.
        """
        feats, labels, _ = self._split_embeddings(datamodule, "train")
        k, width = self.feature_means.shape
        feats64 = feats.double()
        means = torch.stack(
            [
                feats64[labels == c].mean(dim=0)
                if bool((labels == c).any())
                else feats64.mean(dim=0)
                for c in range(k)
            ]
        )
        centred = feats64 - means[labels]
        cov = centred.t() @ centred / max(1, len(centred) - k)
        ridge = 1e-3 * torch.trace(cov) / width
        precision = torch.linalg.inv(
            cov + ridge * torch.eye(width, dtype=cov.dtype, device=cov.device)
        )
        self.feature_means.copy_(means.float())
        self.feature_precision.copy_(precision.float())
        val_feats, _, val_recs = self._split_embeddings(datamodule, "val")
        distances = self.distance(val_feats)
        per_recording = [
            float(distances[val_recs == r].mean()) for r in torch.unique(val_recs).tolist()
        ]
        # 0.1 % above the largest: that validation recording itself stays known whatever
        # float differences between runtimes (eager, ONNX, TorchScript) do to its distance.
        threshold = max(per_recording) * (1.0 + 1e-3)
        self.distance_threshold.fill_(threshold)
        self.distance_fit = {
            "train_windows": len(feats),
            "val_recordings": len(per_recording),
            "threshold": threshold,
            "val_median": float(torch.tensor(per_recording).median()),
        }
        return self.distance_fit
