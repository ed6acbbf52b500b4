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
so the stage scripts with TorchScript and exports with the dynamo ONNX exporter. The envelope
spectrum is only kept up to ``envelope_f_max`` (1 kHz), far below the Nyquist frequency, so the
envelopes are low-passed and decimated (one strided ``conv1d``) before the STFT, which then costs
a fraction of a full-rate one and gives the same frequency bins.
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

# Decimate the envelope while its Nyquist frequency stays at least this many times f_max (room
# for the anti-aliasing filter's transition band).
_DECIMATION_MARGIN = 1.25

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


def decimation_factor(sample_rate: float, f_max: float, lengths: Sequence[int]) -> int:
    """The largest factor ``D`` that keeps ``f_max`` well inside the envelope's Nyquist frequency.

    ``D`` also divides every length in ``lengths`` (the STFT's ``n_fft``, ``hop_length`` and
    ``win_length``), so the STFT of the decimated envelope has the same frequency bins and frames
    of the same duration.

    Args:
        sample_rate: sample rate of the waveform in Hz.
        f_max: highest envelope frequency kept, Hz.
        lengths: sample counts that ``D`` must divide.
    """
    largest = int(float(sample_rate) / (2.0 * _DECIMATION_MARGIN * float(f_max)))
    return next(d for d in range(max(largest, 1), 0, -1) if all(n % d == 0 for n in lengths))


def _antialias_kernel(sample_rate: float, f_max: float, decimation: int) -> np.ndarray:
    """Low-pass FIR from ``f_max`` (passed) to the decimated Nyquist frequency (stopped)."""
    nyquist = float(sample_rate) / (2.0 * decimation)
    taps = math.ceil(_HAMMING_TRANSITION * float(sample_rate) / (nyquist - f_max))
    taps += 1 - taps % 2
    return signal.firwin(taps, (f_max + nyquist) / 2.0, window="hamming", fs=sample_rate)


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
    """Waveforms ``(B, C, T)`` to band envelopes ``(B, C * n_bands, T')``, mean removed.

    Output channel ``c * n_bands + b`` is the envelope of sensor ``c`` in band ``b``. Only samples
    whose filter lies inside the window are kept ("valid" convolution), so no envelope mixes in
    padding. Each window's mean is removed before filtering (the band-pass rejects it anyway; in
    float32 a large sensor offset would otherwise cost precision) and each envelope's mean after.
    With ``decimation`` ``D > 1`` the envelopes are then low-passed (flat up to ``f_max``) and
    every ``D``-th sample kept, again only where the filter lies inside. The convolutions run in
    float32 (onnxruntime has no float64 ``Conv``; on a GPU they are kept out of TF32 so that
    training sees what the exported model computes), the envelope and its mean in float64.

    Args:
        bands: demodulation bands ``[[low, high], ...]`` in Hz.
        sample_rate: sample rate in Hz.
        f_max: highest envelope frequency the decimation keeps, Hz.
        decimation: keep every ``decimation``-th envelope sample (see :func:`decimation_factor`).
    """

    def __init__(
        self, bands: Sequence[Sequence[float]], sample_rate: float, f_max: float, decimation: int
    ) -> None:
        super().__init__()
        self.bands = check_bands(bands, sample_rate)
        self.n_bands = len(self.bands)
        self.taps = fir_length(self.bands, sample_rate)
        self.decimation = int(decimation)
        kernels = torch.from_numpy(analytic_kernels(self.bands, sample_rate))
        lowpass = torch.from_numpy(
            _antialias_kernel(sample_rate, f_max, self.decimation)
            if self.decimation > 1
            else np.ones(1)
        )
        self.lowpass_taps = lowpass.numel()
        # Derived from the settings, so not part of the state_dict.
        self.register_buffer("kernels", kernels.to(torch.float32)[:, None, :], persistent=False)
        self.register_buffer("lowpass", lowpass.to(torch.float32).view(1, 1, -1), persistent=False)

    def output_length(self, window: int) -> int:
        """Envelope samples per window of ``window`` samples.

        Raises:
            ValueError: the window is not longer than the filters.
        """
        taps = self.taps + self.lowpass_taps - 1
        if window <= taps:
            raise ValueError(
                f"a window of {window} samples is too short for the envelope's filters of "
                f"{taps} taps (demodulation: {self.taps}, set by the narrowest of the bands "
                f"{self.bands} Hz): widen the bands or lengthen the window"
            )
        return (window - self.taps + 1 - self.lowpass_taps) // self.decimation + 1

    def forward(self, waveform: Tensor) -> Tensor:
        """Band envelopes ``(B, C * n_bands, output_length(T))`` float64 of ``(B, C, T)``."""
        batch, channels, samples = waveform.shape
        x = waveform.to(torch.float32).reshape(batch * channels, 1, samples)
        parts = conv1d_float32(x - x.mean(dim=-1, keepdim=True), self.kernels, 1)
        # The envelope's fluctuation can be small beside its mean: both in float64, so that
        # removing the mean does not leave float32 rounding as the envelope's weak bins.
        parts = parts.to(torch.float64)
        real, imag = parts[:, : self.n_bands], parts[:, self.n_bands :]
        envelope = torch.sqrt(real * real + imag * imag)
        envelope = envelope - envelope.mean(dim=-1, keepdim=True)
        if self.decimation > 1:
            rows = envelope.reshape(-1, 1, envelope.shape[-1]).to(torch.float32)
            envelope = conv1d_float32(rows, self.lowpass, self.decimation).to(torch.float64)
        return envelope.reshape(batch, channels * self.n_bands, envelope.shape[-1])
