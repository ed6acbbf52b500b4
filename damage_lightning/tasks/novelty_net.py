"""The novelty detector's networks: embeddings, the Gaussian score, the deployable module.

:class:`NoveltyNet` maps spectrograms to one score per window: the squared Mahalanobis distance of
the window's embedding from a Gaussian fitted to the embeddings of healthy training windows
(:class:`GaussianScore`, Ledoit-Wolf shrinkage). The embedding is a registered backbone's output:
the ``spectrum`` backbone (no weights) as it is, or, for a learned backbone,
:class:`AutoencoderFeatures` (the bottleneck of an autoencoder of the spectrum together with its
reconstruction residual). :class:`NoveltyDetector` puts the front end in front and adds the alarm:
waveform in, ``score`` and ``alarm`` out, which is what ONNX and TorchScript carry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from damage_lightning.export.deployable import DeployableModel
from damage_lightning.networks.spectrum import SpectrumBackbone

# Eigenvalues of the shrunk covariance are kept at least this share of their mean: directions in
# which healthy embeddings do not vary at all (the per-channel centring makes some) would otherwise
# turn float32 rounding into large scores.
_MIN_EIGENVALUE_SHARE = 1e-6


def ledoit_wolf(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and Ledoit-Wolf shrunk covariance of ``(n, d)`` features, in float64.

    The shrinkage towards a scaled identity is the Ledoit-Wolf (2004) estimate of the optimal
    one, as scikit-learn computes it.

    Args:
        features: at least two rows.
    """
    x = features.to(torch.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError("a Gaussian needs at least two training windows")
    mean = x.mean(dim=0)
    xc = x - mean
    cov = xc.T @ xc / n
    x2 = xc * xc
    trace = x2.sum(dim=0) / n
    mu = trace.sum() / d
    beta_ = (x2.T @ x2).sum()
    delta_ = (cov * cov).sum()
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * trace.sum() + d * mu * mu) / d
    beta = torch.minimum(beta, delta)
    shrinkage = beta / delta if float(delta) > 0 else torch.zeros((), dtype=torch.float64)
    shrunk = (1 - shrinkage) * cov + shrinkage * mu * torch.eye(d, dtype=torch.float64)
    return mean, shrunk


class GaussianScore(nn.Module):
    """Squared Mahalanobis distance to a Gaussian of healthy features, ``(B, d) -> (B,)``.

    The buffers ``mean`` and ``whitening`` (``W`` with ``W^T W`` the inverse covariance) are set
    by :meth:`fit`; a healthy window's score is then about ``d`` on average.

    Args:
        dim: size ``d`` of the features.
    """

    mean: Tensor
    whitening: Tensor
    fitted: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("whitening", torch.eye(dim))
        self.register_buffer("fitted", torch.tensor(False))

    def forward(self, features: Tensor) -> Tensor:
        """Scores of a batch of features.

        Args:
            features: ``(B, d)``.
        """
        white = (features.to(self.mean.dtype) - self.mean) @ self.whitening.T
        return (white * white).sum(dim=-1)

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        """Fit mean and shrunk covariance to healthy training features ``(n, d)``.

        Args:
            features: one row per healthy training window (float64 preferred).
        """
        mean, cov = ledoit_wolf(features)
        eigenvalues, vectors = torch.linalg.eigh(cov)
        floor = float(eigenvalues.mean()) * _MIN_EIGENVALUE_SHARE
        eigenvalues = eigenvalues.clamp(min=max(floor, 1e-30))
        whitening = vectors.T / eigenvalues.sqrt()[:, None]
        self.mean.copy_(mean.to(self.mean.dtype))
        self.whitening.copy_(whitening.to(self.whitening.dtype))
        self.fitted.fill_(True)


class AutoencoderFeatures(nn.Module):
    """A learned backbone as an autoencoder of the spectrum: bottleneck and residual.

    The backbone sees the spectrogram with each channel's mean removed (gain invariance, as the
    ``spectrum`` backbone); a linear layer makes a ``bottleneck``-sized code of its embedding and
    a small decoder reconstructs the centred spectrum from it. The features are the code and the
    reconstruction residual side by side: what the healthy manifold explains, and what it does
    not.

    Args:
        backbone: a registered backbone (with ``out_features``).
        target: the spectrum the decoder reconstructs.
        bottleneck: size of the code.
        hidden: width of the decoder's hidden layer.
    """

    def __init__(
        self, backbone: nn.Module, target: SpectrumBackbone, bottleneck: int, hidden: int = 128
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.target = target
        self.encode = nn.Linear(int(backbone.out_features), bottleneck)
        self.decode = nn.Sequential(
            nn.Linear(bottleneck, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, target.out_features),
        )
        self.out_features = bottleneck + target.out_features

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(code, spectrum, reconstruction)`` of spectrograms ``(B, C, F, T)``.

        Args:
            x: normalised log spectrograms.
        """
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        code = self.encode(self.backbone(centred))
        return code, self.target(x), self.decode(code)

    def forward(self, x: Tensor) -> Tensor:
        """Code and reconstruction residual ``(B, bottleneck + C * F)``.

        Args:
            x: normalised log spectrograms ``(B, C, F, T)``.
        """
        code, spectrum, reconstruction = self.parts(x)
        return torch.cat([code, spectrum - reconstruction], dim=1)


class NoveltyNet(nn.Module):
    """Spectrograms ``(B, C, F, T)`` to novelty scores ``(B,)``, with the calibrated thresholds.

    Buffers (they travel with checkpoints): ``threshold`` (window alarm above it),
    ``recording_threshold`` (recording alarm above it, for the recording score) and ``calibration``
    (``[window n, window rank, recording n, recording rank, block]`` of the conformal thresholds;
    ``block`` is 1 when the calibration recordings were blocks of recordings).

    Args:
        features: the embedding network (``out_features`` wide).
    """

    threshold: Tensor
    recording_threshold: Tensor
    calibration: Tensor

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.score = GaussianScore(int(features.out_features))
        self.register_buffer("threshold", torch.tensor(float("inf")))
        self.register_buffer("recording_threshold", torch.tensor(float("inf"), dtype=torch.float64))
        self.register_buffer("calibration", torch.zeros(5, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        """Novelty scores: higher means less like the healthy training windows.

        Args:
            x: normalised log spectrograms ``(B, C, F, T)``.
        """
        return self.score(self.features(x))


class NoveltyDetector(DeployableModel):
    """Waveform windows in, ``(score, alarm)`` out: front end, embedding, score, threshold.

    Args:
        frontend: the spectrogram front end (with its normalisation statistics).
        net: the calibrated :class:`NoveltyNet`.
        metadata_extra: the decision rule for the export metadata
            (``deploy.novelty.NoveltyRule.to_metadata``).
    """

    output_names = ("score", "alarm")

    def __init__(
        self, frontend: nn.Module, net: NoveltyNet, metadata_extra: dict | None = None
    ) -> None:
        from damage_lightning.data.order import refuse_order

        refuse_order(frontend, "the novelty detector")
        super().__init__(frontend, net)
        self.metadata_extra.update(metadata_extra or {})

    def forward(self, waveform: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Score waveform windows and compare with the window threshold.

        Args:
            waveform: float32 ``(B, C, window)``.

        Returns:
            ``score`` float32 ``(B,)`` and ``alarm`` bool ``(B,)`` (score above the threshold).
        """
        score = self.net(self.frontend(waveform)).float()
        return score, score > self.net.threshold
