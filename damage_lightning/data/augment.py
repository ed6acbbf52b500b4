"""Waveform augmentations of training batches: speed jitter, time shift, gain, noise at an SNR.

They run on the batch's device, on whole batches of windows ``(B, C, window)``, before the
spectrogram front end (``DamageDataModule.on_after_batch_transfer``, training batches only). They
are never part of the exported model. Every draw comes from a ``torch.Generator`` seeded with the
run seed, epoch, batch index and rank, so the same seed gives the same augmented batches on the
same device, and each augmentation has its own stream: switching one on does not change what
another draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor
from torch.nn import functional as F

# One generator stream per augmentation, so enabling one leaves the draws of the others as they are.
_STREAMS = {"speed": 0, "shift": 1, "gain": 2, "noise": 3}


@dataclass(frozen=True)
class AugmentSettings:
    """What happens to each training window; every field's neutral value switches it off.

    Attributes:
        gain_db: range ``(low, high)`` of a gain in dB, drawn uniformly per window (all channels
            alike, as a sensor sensitivity error would). ``None``: off.
        snr_db: range ``(low, high)`` of the signal-to-noise ratio in dB of added white Gaussian
            noise, drawn uniformly per window; each channel gets noise scaled to its own energy
            (``torchaudio.functional.add_noise``; the energy includes any DC offset).
            ``None``: off.
        shift: largest circular time shift, as a share of the window (``0.5`` reaches every
            offset), drawn uniformly per window in both directions. The window is rolled:
            samples pushed out at one end come back at the other. ``0``: off.
        speed: largest relative speed change, drawn uniformly in ``[1 - speed, 1 + speed]`` per
            window: the window is resampled about its centre so that every frequency is
            multiplied by the same factor, as a change of the machine's speed does. ``0``: off.
    """

    gain_db: tuple[float, float] | None = None
    snr_db: tuple[float, float] | None = None
    shift: float = 0.0
    speed: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gain_db", "snr_db"):
            bounds = getattr(self, name)
            if bounds is not None and (len(bounds) != 2 or bounds[0] > bounds[1]):
                raise ValueError(
                    f"data.augment_{name} must be [low, high] with low <= high, got {bounds}"
                )
        if not 0.0 <= self.shift <= 1.0:
            raise ValueError(f"data.augment_shift must lie in [0, 1], got {self.shift}")
        if not 0.0 <= self.speed < 0.5:
            raise ValueError(
                f"data.augment_speed must lie in [0, 0.5) (a relative change), got {self.speed}"
            )

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is switched on."""
        return (
            self.gain_db is not None or self.snr_db is not None or self.shift > 0 or self.speed > 0
        )


@dataclass(frozen=True)
class AugmentedBatch:
    """The augmented windows and the speed factor each received.

    Attributes:
        waveform: ``(B, C, window)``, the input's device and dtype.
        speed: ``(B,)`` factor by which each window's frequencies were multiplied (all ones with
            speed jitter off); a speed input that goes with the window (rpm) scales by it.
    """

    waveform: Tensor
    speed: Tensor


def batch_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """The generator seed of one training batch, mixed from its coordinates.

    Args:
        seed: the run's seed.
        epoch: the epoch.
        batch: the batch's index within the epoch.
        rank: the process's rank (ranks see different windows and draw differently).
    """
    words = np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(2)
    return int(words[0]) << 32 | int(words[1])


def augment(waveform: Tensor, settings: AugmentSettings, seed: int) -> AugmentedBatch:
    """Apply ``settings`` to a batch of windows, in the order speed, shift, gain, noise.

    Args:
        waveform: ``(B, C, window)`` windows.
        settings: what to apply.
        seed: generator seed of this batch (:func:`batch_seed`).

    Returns:
        The augmented windows and the speed factors.
    """
    if waveform.ndim != 3:
        raise ValueError(f"expected windows (batch, channels, window), got {tuple(waveform.shape)}")
    batch, device = waveform.shape[0], waveform.device
    speed = torch.ones(batch, device=device, dtype=waveform.dtype)
    out = waveform
    if settings.speed > 0:
        u = _uniform(_generator(seed, "speed", device), batch, waveform)
        speed = 1.0 + settings.speed * (2.0 * u - 1.0)
        out = change_speed(out, speed)
    if settings.shift > 0:
        out = circular_shift(out, settings.shift, _generator(seed, "shift", device))
    if settings.gain_db is not None:
        low, high = settings.gain_db
        db = low + (high - low) * _uniform(_generator(seed, "gain", device), batch, waveform)
        out = out * torch.pow(10.0, db / 20.0)[:, None, None]
    if settings.snr_db is not None:
        generator = _generator(seed, "noise", device)
        low, high = settings.snr_db
        snr = low + (high - low) * _uniform(generator, batch, waveform)
        noise = torch.randn(out.shape, generator=generator, device=device, dtype=out.dtype)
        out = AF.add_noise(out, noise, snr[:, None].expand(out.shape[:2]))
    return AugmentedBatch(out, speed)


def change_speed(waveform: Tensor, factor: Tensor) -> Tensor:
    """Resample each window about its centre by its own factor (frequencies times ``factor``).

    Output sample ``n`` is the input at ``c + (n - c) * factor`` (``c`` the window's centre),
    read by linear interpolation (``torch.nn.functional.grid_sample``), with the window mirrored
    at its ends where a speed-up reads past them. One batched call serves a different factor per
    window, which ``torchaudio.functional.resample`` / ``speed`` (one rational ratio per call,
    output length changed) do not. It has no anti-aliasing filter: for factors within a few
    percent of 1 only the top ``factor - 1`` share of the band can fold back, and linear
    interpolation damps the top of the band slightly.

    Args:
        waveform: ``(B, C, L)`` windows.
        factor: ``(B,)`` speed factors (``> 1`` raises every frequency).
    """
    length = waveform.shape[-1]
    t = torch.linspace(-1.0, 1.0, length, device=waveform.device, dtype=waveform.dtype)
    x = t[None, :] * factor[:, None]
    grid = torch.stack([x, torch.zeros_like(x)], dim=-1)[:, None]  # (B, 1, L, 2)
    out = F.grid_sample(
        waveform[:, :, None, :],
        grid,
        mode="bilinear",
        padding_mode="reflection",
        align_corners=True,
    )
    return out[:, :, 0, :]


def circular_shift(waveform: Tensor, share: float, generator: torch.Generator) -> Tensor:
    """Roll each window by its own whole number of samples in ``[-share L, share L]``.

    Args:
        waveform: ``(B, C, L)`` windows.
        share: largest shift as a share of the window length ``L``.
        generator: the draws' generator (on the batch's device).
    """
    batch, channels, length = waveform.shape
    most = round(share * length)
    offset = torch.randint(-most, most + 1, (batch,), generator=generator, device=waveform.device)
    index = (torch.arange(length, device=waveform.device)[None, :] + offset[:, None]) % length
    return torch.gather(waveform, 2, index[:, None, :].expand(batch, channels, length))


def _generator(seed: int, stream: str, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed((seed + _STREAMS[stream] * 0x9E3779B97F4A7C15) % 2**64)
    return generator


def _uniform(generator: torch.Generator, n: int, like: Tensor) -> Tensor:
    return torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
