"""The deployable module: waveform windows in, (logits, probabilities) out, front end included."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from damage_lightning.data.order import has_order

INPUT_NAME = "waveform"
OUTPUT_NAMES = ("logits", "probabilities")
#: Outputs of a model with an abstain floor: also whether each window is ``unknown``.
ABSTAIN_OUTPUT_NAMES = ("logits", "probabilities", "unknown")
#: Outputs of a model with a feature-distance gate: also each window's distance.
GATED_OUTPUT_NAMES = ("logits", "probabilities", "unknown", "distance")


class DeployableModel(nn.Module):
    """Waveform in, (logits, probabilities) out: the front end and the network in one module.

    This is what ONNX and TorchScript carry, so serving runs the very same front end (with its
    normalisation statistics) as training did.

    Args:
        frontend: maps waveform windows ``(B, C, window)`` to features, e.g. a normalised log
            spectrogram ``(B, C, F, T)``.
        net: maps those features to logits ``(B, K)``.
        temperature: the calibration temperature dividing the logits (1: none).
    """

    output_names = OUTPUT_NAMES
    # Plain Python data for the export metadata, not part of the scripted graph.
    __jit_ignored_attributes__: ClassVar[list[str]] = ["metadata_extra"]
    # ``speed`` (whether the front end takes the shaft speed, order spectra) is a constant for
    # TorchScript, so a front end without a speed argument is never compiled with one.
    __constants__: ClassVar[list[str]] = ["speed"]

    def __init__(self, frontend: nn.Module, net: nn.Module, temperature: float = 1.0):
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.frontend = frontend
        self.net = net
        self.speed = has_order(frontend)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        #: Entries a task adds to the export metadata (``ExportSpec.metadata(**extra)``).
        self.metadata_extra: dict[str, Any] = {}

    def scores(self, waveform: Tensor, rpm: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Calibrated ``(logits, probabilities)`` of waveform windows (see :meth:`forward`)."""
        logits = self.net(self.frontend_features(waveform, rpm)).float() / self.temperature
        return logits, torch.softmax(logits, dim=-1)

    def frontend_features(self, waveform: Tensor, rpm: Tensor | None = None) -> Tensor:
        """The front end's output; the speed goes in only where the front end takes it."""
        if self.speed:
            return self.frontend(waveform, rpm)
        return self.frontend(waveform)

    def forward(self, waveform: Tensor, rpm: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Classify waveform windows.

        Args:
            waveform: float32 ``(B, C, window)``.
            rpm: float32 ``(B,)`` shaft speed of each window, for a front end with order
                spectra (which then requires it; the ONNX graph's second input ``rpm``).

        Returns:
            ``(logits, probabilities)``, both float32 ``(B, K)``: the network's logits divided
            by the temperature (cast to float32 first when the network runs at lower
            precision) and their softmax, the calibrated probabilities.
        """
        return self.scores(waveform, rpm)


class AbstainingModel(DeployableModel):
    """A :class:`DeployableModel` that also says which windows it does not decide.

    Args:
        frontend: the front end.
        net: the network.
        temperature: the calibration temperature.
        abstain: calibrated probability floor: a window whose top probability is below it is
            ``unknown``.
    """

    output_names = ABSTAIN_OUTPUT_NAMES

    def __init__(
        self, frontend: nn.Module, net: nn.Module, temperature: float = 1.0, abstain: float = 0.5
    ):
        super().__init__(frontend, net, temperature)
        if not 0.0 < abstain < 1.0:
            raise ValueError(f"abstain must be a probability floor in (0, 1), got {abstain!r}")
        self.register_buffer("abstain", torch.tensor(float(abstain)))

    def forward(  # type: ignore[override]
        self, waveform: Tensor, rpm: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, probabilities, unknown)``; ``unknown`` is boolean ``(B,)``.

        Args:
            waveform: float32 ``(B, C, window)``.
            rpm: float32 ``(B,)`` shaft speeds (order spectra only).
        """
        logits, probabilities = self.scores(waveform, rpm)
        return logits, probabilities, probabilities.amax(dim=-1) < self.abstain


def min_mahalanobis(features: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """Squared Mahalanobis distance of each row of ``features`` to the nearest class mean.

    ``(f - m)^T P (f - m)`` expanded into matrix products (no ``(B, K, D)`` intermediate, and
    only operators every ONNX runtime has).

    Args:
        features: ``(B, D)`` embeddings.
        means: ``(K, D)`` class means.
        precision: ``(D, D)`` inverse of the shared covariance.

    Returns:
        ``(B,)`` float32 distances.
    """
    f = features.float()
    fp = f @ precision
    own = (fp * f).sum(dim=-1, keepdim=True)
    cross = fp @ means.t()
    centre = ((means @ precision) * means).sum(dim=-1)
    return (own - 2.0 * cross + centre).clamp_min(0.0).amin(dim=-1)


class DistanceGatedModel(DeployableModel):
    """A :class:`DeployableModel` that also gives each window's distance to the training classes.

    The network is split into its body (spectrogram to embedding) and its last linear layer;
    the distance is the squared Mahalanobis distance of the embedding to the nearest training
    class mean (shared covariance). A window is ``unknown`` when its distance is above the
    threshold or its top probability below the floor.

    Args:
        frontend: the front end.
        net: the network, an ``nn.Sequential`` ending in its linear head.
        temperature: the calibration temperature.
        abstain: calibrated probability floor, or ``None``.
        means: ``(K, D)`` class means of the training embeddings.
        precision: ``(D, D)`` inverse shared covariance.
        threshold: distance above which a recording (and a window) is unknown.
    """

    output_names = GATED_OUTPUT_NAMES

    def __init__(
        self,
        frontend: nn.Module,
        net: nn.Module,
        temperature: float,
        abstain: float | None,
        means: Tensor,
        precision: Tensor,
        threshold: float,
    ):
        super().__init__(frontend, net, temperature)
        if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
            raise ValueError("a distance gate needs a Sequential network ending in nn.Linear")
        self.body = net[:-1]
        self.head = net[-1]
        self.register_buffer("floor", torch.tensor(0.0 if abstain is None else float(abstain)))
        self.register_buffer("means", means.detach().float().clone())
        self.register_buffer("precision", precision.detach().float().clone())
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(  # type: ignore[override]
        self, waveform: Tensor, rpm: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(logits, probabilities, unknown, distance)``.

        Args:
            waveform: float32 ``(B, C, window)``.
            rpm: float32 ``(B,)`` shaft speeds (order spectra only).
        """
        features = self.body(self.frontend_features(waveform, rpm))
        logits = self.head(features).float() / self.temperature
        probabilities = torch.softmax(logits, dim=-1)
        distance = min_mahalanobis(features, self.means, self.precision)
        unknown = (probabilities.amax(dim=-1) < self.floor) | (distance > self.threshold)
        return logits, probabilities, unknown, distance


def device_of(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for an empty module)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def example_waveforms(
    channels: int, window: int, batch: int, seed: int = 0, device: torch.device | str = "cpu"
) -> Tensor:
    """Seeded waveform windows of realistic shape and scale, for tracing and verification.

    Each window is a few sinusoids of random frequency and amplitude plus broadband noise, at an
    overall level between about 0.01 and 10 (vibration signals in g or m/s^2 span that range), so
    the log spectrogram sees both peaks and a noise floor as it does on real data.

    Args:
        channels: number of channels ``C``.
        window: samples per window ``W``.
        batch: number of windows ``B``.
        seed: random seed.
        device: where the tensor is created.

    Returns:
        float32 ``(B, C, W)``.
    """
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(window, dtype=torch.float64)
    freqs = torch.rand(batch, channels, 3, 1, generator=gen, dtype=torch.float64) * 0.45 + 0.01
    phases = torch.rand(batch, channels, 3, 1, generator=gen, dtype=torch.float64) * 2 * math.pi
    amps = torch.rand(batch, channels, 3, 1, generator=gen, dtype=torch.float64) + 0.1
    tones = (amps * torch.sin(2 * math.pi * freqs * t + phases)).sum(dim=2)
    noise = 0.3 * torch.randn(batch, channels, window, generator=gen, dtype=torch.float64)
    level = 10 ** (torch.rand(batch, 1, 1, generator=gen, dtype=torch.float64) * 3 - 2)
    return (level * (tones + noise)).to(torch.float32).to(device)


def example_speeds(model: nn.Module, batch: int, seed: int = 0) -> Tensor | None:
    """Seeded shaft speeds ``(B,)`` for a model that takes them (else ``None``).

    They span 0.3 to 1.2 times the speed at which the highest order reaches the highest
    frequency row, so some orders fall past the spectrum's end, as at a fast shaft.

    Args:
        model: the deployable module.
        batch: number of windows ``B``.
        seed: random seed.
    """
    from damage_lightning.data.order import takes_speed

    if not takes_speed(model):
        return None
    full = model.frontend.order.full_speed()
    gen = torch.Generator().manual_seed(seed + 7919)
    u = torch.rand(batch, generator=gen, dtype=torch.float64)
    return ((0.3 + 0.9 * u) * full).to(torch.float32).to(device_of(model))


def model_inputs(model: nn.Module, waveform: Tensor, seed: int = 0) -> tuple[Tensor, ...]:
    """The positional inputs of ``model`` for ``waveform``: with the speed when it takes one."""
    rpm = example_speeds(model, waveform.shape[0], seed)
    return (waveform,) if rpm is None else (waveform, rpm.to(waveform.device))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode, restoring its train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def cpu_float_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy in eval mode, leaving ``model`` untouched."""
    # Exports must not depend on the training device or precision, and must not change the
    # caller's module (it may be the live LightningModule's network).
    return copy.deepcopy(model).cpu().float().eval()
