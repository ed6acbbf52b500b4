"""The deployable module: waveform windows in, (logits, probabilities) out, front end included."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

INPUT_NAME = "waveform"
OUTPUT_NAMES = ("logits", "probabilities")


class DeployableModel(nn.Module):
    """Waveform in, (logits, probabilities) out: the front end and the network in one module.

    This is what ONNX and TorchScript carry, so serving runs the very same front end (with its
    normalisation statistics) as training did.

    Args:
        frontend: maps waveform windows ``(B, C, window)`` to features, e.g. a normalised log
            spectrogram ``(B, C, F, T)``.
        net: maps those features to logits ``(B, K)``.
    """

    output_names = OUTPUT_NAMES
    # Plain Python data for the export metadata, not part of the scripted graph.
    __jit_ignored_attributes__: ClassVar[list[str]] = ["metadata_extra"]

    def __init__(self, frontend: nn.Module, net: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.net = net
        #: Entries a task adds to the export metadata (``ExportSpec.metadata(**extra)``).
        self.metadata_extra: dict[str, Any] = {}

    def forward(self, waveform: Tensor) -> tuple[Tensor, Tensor]:
        """Classify waveform windows.

        Args:
            waveform: float32 ``(B, C, window)``.

        Returns:
            ``(logits, probabilities)``, both float32 ``(B, K)``; probabilities are the softmax of
            the logits (cast to float32 first when the network runs at lower precision).
        """
        logits = self.net(self.frontend(waveform)).float()
        return logits, torch.softmax(logits, dim=-1)


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
