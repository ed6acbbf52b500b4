"""Envelope demodulation, the front end's pre-stage for bearing diagnostics (``kind="envelope"``).

A local bearing fault strikes once per passage of a rolling element and rings the structure's
resonances; the fault frequency is then the repetition rate of those bursts, i.e. the spectrum of
the envelope of a resonance band, not a line of the raw spectrum. :class:`EnvelopeStage`
band-passes each channel into a few demodulation bands, takes the envelope ``|x + j H{x}|`` of
each (``H`` the Hilbert transform) and removes its mean; the spectrogram front end then computes
the (Welch) spectrum of each envelope. Fault frequencies are set by the bearing's geometry and
speed, so they do not move with the fault's size, which mostly changes the amplitude.

Each band is one complex FIR filter, the analytic band-pass ``2 h(n) exp(j 2 pi f_c n / f_s)``
(``h`` a Hamming-windowed low-pass of half the band's width, ``f_c`` the band's centre): its real
part is the band-pass and its imaginary part the Hilbert transform of that band-pass, with the
same delay. All bands are one ``conv1d`` (kernels computed at construction, stored as buffers),
so the stage scripts with TorchScript and exports with the dynamo ONNX exporter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import signal
from torch import Tensor, nn

from damage_lightning.data.dft import conv1d_float32

#: Default highest envelope frequency, Hz. Bearing defect frequencies are a few times the shaft
#: rate (the inner-race frequency is about ``0.6 z f_r`` for ``z`` rolling elements, 5 to 10
#: times ``f_r`` for common bearings), so for shafts up to 3600 rpm the first harmonics of every
#: defect frequency lie below 1 kHz.
DEFAULT_ENVELOPE_F_MAX = 1000.0

# The default bank: octave bands whose top edge is 90 % of the Nyquist frequency, highest first.
# Resonances excited by impacts lie in the upper part of the spectrum, where shaft harmonics,
# imbalance and gear meshing are weak; the bank is relative to the sample rate, so no band is
# tuned to one machine.
_DEFAULT_OCTAVES = 3
_TOP_EDGE = 0.9

# FIR length from the Hamming window's rule of thumb ``3.3 f_s / transition``, with a transition
# of half the narrowest band's width: bands overlap at their -6 dB edges, so a sharper cut buys
# nothing but a longer kernel (and fewer valid samples per window).
_HAMMING_TRANSITION = 3.3


def default_bands(sample_rate: float) -> list[list[float]]:
    """The default demodulation bands for ``sample_rate``: octaves below 0.9 times Nyquist.

    At 12 kHz: ``[[2700, 5400], [1350, 2700], [675, 1350]]`` Hz.

    Args:
        sample_rate: sample rate in Hz.

    Returns:
        ``[[low, high], ...]`` in Hz, highest band first.
    """
    top = _TOP_EDGE * float(sample_rate) / 2.0
    return [[top / 2.0 ** (k + 1), top / 2.0**k] for k in range(_DEFAULT_OCTAVES)]


def check_bands(bands: Sequence[Sequence[float]], sample_rate: float) -> list[list[float]]:
    """Validate demodulation bands and return them as ``[[low, high], ...]`` floats.

    Args:
        bands: ``[[low, high], ...]`` in Hz.
        sample_rate: sample rate in Hz.

    Raises:
        ValueError: naming each bad band and why (not a pair, not finite, not
            ``0 < low < high < Nyquist``).
    """
    nyquist = float(sample_rate) / 2.0
    if isinstance(bands, str) or not isinstance(bands, Sequence) or len(bands) == 0:
        raise ValueError(
            f"envelope_bands must be a non-empty list of [low, high] pairs in Hz, got {bands!r}"
        )
    out, problems = [], []
    for i, band in enumerate(bands):
        if isinstance(band, str) or not isinstance(band, Sequence) or len(band) != 2:
            problems.append(f"envelope_bands[{i}] = {band!r} is not a [low, high] pair")
            continue
        try:
            low, high = float(band[0]), float(band[1])
        except (TypeError, ValueError):
            problems.append(f"envelope_bands[{i}] = {band!r} is not a pair of numbers")
            continue
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low < high < nyquist):
            problems.append(
                f"envelope_bands[{i}] = [{low:g}, {high:g}] Hz: need 0 < low < high < "
                f"{nyquist:g} Hz (half the sample rate {sample_rate:g} Hz)"
            )
            continue
        out.append([low, high])
    if problems:
        raise ValueError("invalid envelope settings: " + "; ".join(problems))
    return out


def fir_length(bands: Sequence[Sequence[float]], sample_rate: float) -> int:
    """Taps of the demodulation filters (odd, shared by every band; set by the narrowest)."""
    narrowest = min(high - low for low, high in bands)
    taps = math.ceil(_HAMMING_TRANSITION * float(sample_rate) / (narrowest / 2.0))
    return taps + 1 - taps % 2


def analytic_kernels(bands: Sequence[Sequence[float]], sample_rate: float) -> np.ndarray:
    """The analytic band-pass filters of ``bands``: ``(2 * n_bands, taps)`` float64.

    Rows ``0 .. n_bands - 1`` are the real parts (the band-passes), rows ``n_bands ..`` the
    imaginary parts (their Hilbert transforms). The factor 2 makes the envelope of a tone of
    amplitude ``A`` inside a band equal to ``A``.

    Args:
        bands: ``[[low, high], ...]`` in Hz (validated, see :func:`check_bands`).
        sample_rate: sample rate in Hz.
    """
    taps = fir_length(bands, sample_rate)
    n = np.arange(taps) - (taps - 1) / 2.0
    real, imag = [], []
    for low, high in bands:
        lowpass = signal.firwin(taps, (high - low) / 2.0, window="hamming", fs=sample_rate)
        phase = 2.0 * np.pi * (low + high) / 2.0 / sample_rate * n
        real.append(2.0 * lowpass * np.cos(phase))
        imag.append(2.0 * lowpass * np.sin(phase))
    # conv1d correlates rather than convolves: the imaginary rows then give -H{x}, which leaves
    # the envelope unchanged.
    return np.concatenate([real, imag])


class EnvelopeStage(nn.Module):
    """Waveforms ``(B, C, T)`` to band envelopes ``(B, C * n_bands, T - taps + 1)``, mean removed.

    Output channel ``c * n_bands + b`` is the envelope of sensor ``c`` in band ``b``. Only samples
    whose filter lies inside the window are kept ("valid" convolution), so no envelope mixes in
    padding. Each window's mean is removed before filtering (the band-pass rejects it anyway; in
    float32 a large sensor offset would otherwise cost precision) and each envelope's mean after.
    The convolution runs in float32 (onnxruntime has no float64 ``Conv``; on a GPU it is kept
    out of TF32 so that training sees what the exported model computes), the envelope in float64
    (the STFT that follows takes float64 anyway).

    Args:
        bands: demodulation bands ``[[low, high], ...]`` in Hz.
        sample_rate: sample rate in Hz.
    """

    def __init__(self, bands: Sequence[Sequence[float]], sample_rate: float) -> None:
        super().__init__()
        self.bands = check_bands(bands, sample_rate)
        self.n_bands = len(self.bands)
        self.taps = fir_length(self.bands, sample_rate)
        kernels = torch.from_numpy(analytic_kernels(self.bands, sample_rate))
        # Derived from the settings, so not part of the state_dict.
        self.register_buffer("kernels", kernels.to(torch.float32)[:, None, :], persistent=False)

    def output_length(self, window: int) -> int:
        """Envelope samples per window of ``window`` samples (``window - taps + 1``)."""
        return window - self.taps + 1

    def forward(self, waveform: Tensor) -> Tensor:
        """Band envelopes ``(B, C * n_bands, T - taps + 1)`` float64 of waveforms ``(B, C, T)``."""
        batch, channels, samples = waveform.shape
        x = waveform.to(torch.float32).reshape(batch * channels, 1, samples)
        parts = conv1d_float32(x - x.mean(dim=-1, keepdim=True), self.kernels, 1)
        # The envelope's fluctuation can be small beside its mean: both in float64, so that
        # removing the mean does not leave float32 rounding as the envelope's weak bins.
        parts = parts.to(torch.float64)
        real, imag = parts[:, : self.n_bands], parts[:, self.n_bands :]
        envelope = torch.sqrt(real * real + imag * imag)
        envelope = envelope - envelope.mean(dim=-1, keepdim=True)
        return envelope.reshape(batch, channels * self.n_bands, envelope.shape[-1])
