"""Checks shared by training, ``predict`` and the gateway: clipping, flat lines, sample rates."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class ClippedSide:
    """One rail of a channel that the clipping rule finds saturated.

    Args:
        side: ``maximum`` or ``minimum``.
        level: the value of that extreme.
        at_level: indices of every sample exactly at ``level``.
        in_runs: how many of them sit in runs of at least ``min_run`` equal consecutive samples.
        by_runs: whether the runs (not the share of samples at the level) triggered the rule.
    """

    side: str
    level: float
    at_level: np.ndarray
    in_runs: int
    by_runs: bool


def clipped_sides(
    x: np.ndarray,
    min_run: int = CLIP_MIN_RUN,
    min_fraction: float = CLIP_MIN_FRACTION,
    any_fraction: float = CLIP_ANY_FRACTION,
    block: int | None = None,
) -> list[ClippedSide]:
    """The rails of one channel at which it is clipped (saturated): the one clipping rule.

    A rail is clipped when the samples at the channel's maximum (or minimum) value that sit in
    runs of at least ``min_run`` equal consecutive samples make up more than ``min_fraction`` of
    the channel, or when more than ``any_fraction`` of all samples sit exactly at that extreme
    (broadband signals hit a rail in isolated samples). A healthy analogue signal reaches its
    extreme once or a few times; a sensor or ADC at its rail stays there for several samples, many
    times. A constant channel has no rails (it is a flat line).

    Args:
        x: one channel, ``(samples,)``.
        min_run: shortest run at a rail that counts as a flat top.
        min_fraction: share of the samples in such runs above which the rail is clipped.
        any_fraction: share of the samples exactly at a rail above which it is clipped.
        block: apply the shares to each block of this many samples (a rail is clipped when one
            block passes), so that a short overload in a long recording is not diluted by it;
            ``None``: to the whole channel.
    """
    n = len(x)
    if n == 0:
        return []
    lo, hi = x.min(), x.max()
    if lo == hi:
        return []
    block = n if block is None else max(1, min(int(block), n))
    out = []
    for level, side in ((hi, "maximum"), (lo, "minimum")):
        idx = np.flatnonzero(x == level)
        if len(idx) < min_run:
            continue
        breaks = np.flatnonzero(np.diff(idx) != 1)
        starts = np.concatenate(([0], breaks + 1))
        stops = np.concatenate((breaks + 1, [len(idx)]))
        lengths = stops - starts
        long = lengths >= min_run
        in_runs = int(lengths[long].sum())
        blocks = -(-n // block)
        per_block_runs = np.bincount(idx[starts[long]] // block, lengths[long], blocks)
        per_block_any = np.bincount(idx // block, minlength=blocks)
        if (per_block_runs > min_fraction * block).any():
            out.append(ClippedSide(side, float(level), idx, in_runs, True))
        elif (per_block_any > any_fraction * block).any():
            out.append(ClippedSide(side, float(level), idx, in_runs, False))
    return out


def channel_warnings(data: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    """Return ``(location, reason)`` for constant (flat-line) and clipped channels.

    The clipping rule is :func:`clipped_sides` with its defaults (``CLIP_MIN_RUN`` = 3,
    ``CLIP_MIN_FRACTION`` = 0.1 %, ``CLIP_ANY_FRACTION`` = 1 %). The sensor-health gate
    (``damage_lightning.evaluation.health``) applies the same rule and also names the samples.

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
        reasons = [clip_text(s, n) for s in clipped_sides(data[c])]
        if reasons:
            out.append((where, "channel looks clipped (saturated): " + "; ".join(reasons)))
    return out


def clip_text(side: ClippedSide, n: int, min_run: int = CLIP_MIN_RUN) -> str:
    """How a clipped rail shows, in words with the numbers (``n``: samples of the channel)."""
    if side.by_runs:
        return (
            f"{side.in_runs} samples ({100.0 * side.in_runs / n:.2g}%) stay at its {side.side} "
            f"{side.level:.6g} in runs of {min_run} or more"
        )
    count = len(side.at_level)
    return (
        f"{count} samples ({100.0 * count / n:.2g}%) sit exactly at its {side.side} "
        f"{side.level:.6g}"
    )


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
