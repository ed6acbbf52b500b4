"""Checks shared by training, ``predict`` and the gateway: clipping, flat lines, sample rates."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

#: Sample rates within this relative tolerance are the same rate (time columns are rounded).
RATE_RTOL = 1e-4
#: Clipping rule: samples at a channel's extreme value, in runs at least this long ...
CLIP_MIN_RUN = 3
#: ... making up more than this fraction of the channel's samples.
CLIP_MIN_FRACTION = 1e-3
#: ... or: samples exactly at one extreme, in any pattern, making up more than this fraction.
CLIP_ANY_FRACTION = 1e-2


def channel_warnings(data: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    """Return ``(location, reason)`` for constant (flat-line) and clipped channels.

    A channel is clipped (saturated) when the samples at its maximum value, or at its minimum
    value, that sit in runs of at least ``CLIP_MIN_RUN`` equal consecutive samples make up more
    than ``CLIP_MIN_FRACTION`` (0.1 %) of the channel, or when more than ``CLIP_ANY_FRACTION``
    (1 %) of all samples sit exactly at one extreme (broadband signals hit a rail in isolated
    samples). A healthy analogue signal reaches its extreme once or a few times; a sensor or ADC
    at its rail stays there for several samples, many times.

    Args:
        data: ``(channels, samples)`` array.
        names: the channel names.
    """
    out: list[tuple[str, str]] = []
    n = data.shape[1]
    if n == 0:
        return out
    lo, hi = data.min(axis=1), data.max(axis=1)
    for c, name in enumerate(names):
        where = f"column '{name}'"
        if lo[c] == hi[c]:
            out.append((where, f"channel is constant (flat line at {float(lo[c]):.6g})"))
            continue
        x = data[c]
        reasons = []
        for level, side in ((hi[c], "maximum"), (lo[c], "minimum")):
            idx = np.flatnonzero(x == level)
            if len(idx) < CLIP_MIN_RUN:
                continue
            breaks = np.flatnonzero(np.diff(idx) != 1)
            starts = np.concatenate(([0], breaks + 1))
            stops = np.concatenate((breaks + 1, [len(idx)]))
            lengths = stops - starts
            in_runs = int(lengths[lengths >= CLIP_MIN_RUN].sum())
            if in_runs > CLIP_MIN_FRACTION * n:
                reasons.append(
                    f"{in_runs} samples ({100.0 * in_runs / n:.2g}%) stay at its {side} "
                    f"{float(level):.6g} in runs of {CLIP_MIN_RUN} or more"
                )
            elif len(idx) > CLIP_ANY_FRACTION * n:
                reasons.append(
                    f"{len(idx)} samples ({100.0 * len(idx) / n:.2g}%) sit exactly at its "
                    f"{side} {float(level):.6g}"
                )
        if reasons:
            out.append((where, "channel looks clipped (saturated): " + "; ".join(reasons)))
    return out


def resample(data: np.ndarray, from_rate: float, to_rate: float) -> tuple[np.ndarray, float]:
    """Resample ``(channels, samples)`` with a polyphase filter (``scipy.signal.resample_poly``).

    The ratio is approximated by a fraction with a denominator of at most 1000, so the effective
    rate can differ from ``to_rate`` by a few parts per million; it is returned.

    Args:
        data: float32 ``(channels, samples)``.
        from_rate: the recording's rate in Hz.
        to_rate: the wanted rate in Hz.

    Returns:
        ``(resampled float32 C-contiguous array, effective rate)``.
    """
    # scipy is not on every gateway; callers turn the ImportError into a message naming the file.
    from scipy.signal import resample_poly

    ratio = Fraction(to_rate / from_rate).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    out = resample_poly(data, up, down, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32), from_rate * up / down


def same_rate(a: float, b: float) -> bool:
    """Whether two sample rates are equal within ``RATE_RTOL``."""
    return abs(a - b) <= RATE_RTOL * max(abs(a), abs(b))


def fmt_rate(rate: float) -> str:
    """A rate as users read it: ``12000 Hz``."""
    return f"{rate:g} Hz"
