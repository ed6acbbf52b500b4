"""The sensor-health gate: per recording and channel, faults of the sensor, not of the structure.

Training (``DamageDataModule(health=...)``), ``predict`` and the torch-free gateway run the same
checks (:func:`check_recording`) and flag windows with the same rule (:func:`window_health`).
Numpy only: the gateway imports it beside numpy, pandas, pyarrow and onnxruntime.

The checks, on a ``(channels, samples)`` waveform:

* ``clipping``: flat tops at the channel's extreme value, either sign (``io.checks.clipped_sides``,
  the rule the data warnings use).
* ``flat_line``: a channel constant to the precision it was written with, or stretches whose level
  drops 60 dB below the channel's typical level.
* ``dropout``: runs of exactly repeated values (zeros or a held value).
* ``spike``: single samples far outside the channel's robust scale and far above their neighbours.
* ``dc_offset``: a mean larger than the standard deviation.
* ``drift``: a baseline that moves by more than a standard deviation across the recording.
* ``rms_range``: an RMS far outside the training recordings' range (needs a
  :class:`~damage_lightning.card.SensorReference` from :func:`fit_reference`).

Each finding is a :class:`~damage_lightning.card.SensorFinding` naming the file, the channel, the
samples ``[start, stop)`` and the reason with its numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from damage_lightning.card import SensorFinding, SensorReference
from damage_lightning.io.checks import (
    CLIP_ANY_FRACTION,
    CLIP_MIN_FRACTION,
    CLIP_MIN_RUN,
    clip_text,
    clipped_sides,
)

#: The kinds of finding, in the order the checks run.
KINDS = ("clipping", "flat_line", "dropout", "spike", "dc_offset", "drift", "rms_range")
#: Key of the reference in an exported model's metadata (JSON text of a ``SensorReference``).
METADATA_KEY = "sensor_health"
#: ``1.4826 * MAD`` estimates the standard deviation of Gaussian data.
MAD_TO_STD = 1.4826
# The robust centre and scale of a long channel are estimated from at most this many evenly spaced
# samples: quantiles of a million samples are exact to a fraction of a percent, and the median of
# ten million would cost most of the gate's time.
ROBUST_SAMPLES = 1 << 20
# Shortest block over which a level (standard deviation) is estimated.
MIN_BLOCK = 16


@dataclass(frozen=True)
class HealthOptions:
    """Thresholds of the sensor-health gate, chosen from the physics of vibration measurement.

    The defaults are generous: a finding should mean a sensor or acquisition fault, not an
    unusual but real vibration. Vibration levels vary with excitation over orders of magnitude,
    structures ring after impacts, and recordings may be short, so every limit is relative to the
    channel itself (or, for the RMS, to the training recordings) and far from what healthy
    data reach.

    Args:
        clip_min_run: a flat top is at least this many equal consecutive samples at the channel's
            extreme (3: an analogue signal reaches its peak in one sample, a railed ADC stays).
        clip_min_fraction: ... and such runs make up more than this share of the channel.
        clip_any_fraction: or more than this share of all samples sit exactly at one extreme
            (broadband signals through a saturating sensor touch the rail in single samples).
        clip_block_s: the shares are taken over blocks of this many seconds, so that a short
            overload in a long recording is not diluted (1 s; the load-time data warning applies
            the same rule to the whole channel).
        flat_ratio: a stretch is a flat line when its standard deviation is below this share of
            the channel's median block standard deviation (1e-3: 60 dB down, below the noise
            floor a live accelerometer chain shows relative to its normal signal).
        flat_min_s: length of the blocks over which the level is measured, seconds (0.1 s: long
            enough for a stable estimate, at least ``MIN_BLOCK`` samples). A finding's range is
            widened by one block on either side, where the collapse starts or ends mid-block.
        flat_precision: a whole channel whose peak-to-peak range is below this share of its
            largest magnitude is constant to the precision it was written with (1e-5: five
            significant digits).
        dropout_min_run: a dropout is at least this many exactly repeated consecutive values
            (16: a vibration signal resolved to many quantisation steps changes within a few
            samples; DAQs that lose data fill whole buffers with zeros or the last value).
        spike_factor: a spike lies more than this many robust standard deviations
            (``1.4826 * MAD``) from the channel's median (10: Gaussian vibration never gets there,
            and an impact that does rings over many samples).
        spike_isolation: ... and more than this many times as far out as every other sample
            within ``spike_neighbours`` on either side (3: a real impact excites resonances that
            ring, so a slow one keeps the next samples near the peak and a fast one, up to the
            Nyquist frequency, has another crest of similar size within a few samples; an
            electrical glitch or bit error stands alone).
        spike_neighbours: samples on either side compared with a spike candidate (8: a
            resonance below an eighth of the sample rate keeps the adjacent samples within 70 %
            of the peak; one above it completes a cycle within 8 samples). Samples closer than
            this to either end of the recording are not judged: what follows them is missing.
        dc_factor: a DC offset is a mean larger than this many standard deviations (1: an
            AC-coupled vibration signal oscillates about zero; even one cycle in the whole
            recording keeps the mean below half the standard deviation). Channels that carry a
            mean in the training recordings (a DC-coupled sensor that sees gravity) are left alone
            when the reference says so.
        drift_blocks: the recording is cut into this many equal blocks to see its baseline move.
        drift_factor: drift is a spread of the block means larger than this many times the mean
            standard deviation within the blocks (1: vibration with more than a few cycles per
            block moves the block mean by a small fraction of its standard deviation).
        rms_spread: the training RMS range is the median log RMS plus or minus this many robust
            standard deviations of the training recordings' log RMS ...
        rms_margin_decades: ... widened by this many decades on either side (1: a factor of ten
            beyond the spread the training data showed, since excitation levels vary; a dead
            sensor or a wrong gain is off by two decades or more).
        merge_gap_s: findings of one kind in one channel closer than this (seconds) are one finding.
    """

    clip_min_run: int = CLIP_MIN_RUN
    clip_min_fraction: float = CLIP_MIN_FRACTION
    clip_any_fraction: float = CLIP_ANY_FRACTION
    clip_block_s: float = 1.0
    flat_ratio: float = 1e-3
    flat_min_s: float = 0.1
    flat_precision: float = 1e-5
    dropout_min_run: int = 16
    spike_factor: float = 10.0
    spike_isolation: float = 3.0
    spike_neighbours: int = 8
    dc_factor: float = 1.0
    drift_blocks: int = 4
    drift_factor: float = 1.0
    rms_spread: float = 3.0
    rms_margin_decades: float = 1.0
    merge_gap_s: float = 0.25

    def to_json(self) -> dict[str, float | int]:
        """The thresholds as plain JSON values (for the model card)."""
        return asdict(self)


DEFAULT_OPTIONS = HealthOptions()


# ------------------------------------------------------------------------------------ helpers
def _merge(starts: np.ndarray, stops: np.ndarray, gap: int) -> list[tuple[int, int, int]]:
    """Sorted ranges ``[start, stop)`` merged where less than ``gap`` apart: ``(start, stop, n)``.

    ``n`` is how many of the input ranges each merged range holds.
    """
    if len(starts) == 0:
        return []
    order = np.argsort(starts, kind="stable")
    starts, stops = np.asarray(starts)[order], np.asarray(stops)[order]
    reach = np.maximum.accumulate(stops)
    new = np.concatenate(([True], starts[1:] >= reach[:-1] + gap))
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:], [len(starts)])) - 1
    return [
        (int(starts[a]), int(reach[b]), int(b - a + 1)) for a, b in zip(first, last, strict=True)
    ]


def _robust(x: np.ndarray) -> tuple[float, float]:
    """Median and robust standard deviation (``1.4826 * MAD``) of a channel, from a subsample."""
    step = max(1, -(-len(x) // ROBUST_SAMPLES))
    sample = np.asarray(x[::step], dtype=np.float64)
    centre = float(np.median(sample))
    return centre, MAD_TO_STD * float(np.median(np.abs(sample - centre)))


def _block_stds(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviation and start of consecutive blocks; the last one covers the tail."""
    n = len(x)
    k = n // block
    stds = np.asarray(x[: k * block], dtype=np.float64).reshape(k, block).std(axis=1)
    starts = np.arange(k, dtype=np.int64) * block
    if k * block < n:
        stds = np.append(stds, np.asarray(x[n - block :], dtype=np.float64).std())
        starts = np.append(starts, n - block)
    return stds, starts


@dataclass
class _Channel:
    """One channel being checked, with what several checks share."""

    x: np.ndarray
    file: str
    name: str
    gap: int
    options: HealthOptions

    def finding(self, kind: str, start: int, stop: int, reason: str) -> SensorFinding:
        return SensorFinding(
            file=self.file, channel=self.name, start=int(start), stop=int(stop), kind=kind,
            reason=reason,
        )  # fmt: skip

    def ranges(
        self, kind: str, starts: np.ndarray, stops: np.ndarray, describe
    ) -> list[SensorFinding]:
        """One finding per merged range; ``describe(start, stop, count)`` gives its reason."""
        return [
            self.finding(kind, a, b, describe(a, b, count))
            for a, b, count in _merge(starts, stops, self.gap)
        ]


# ------------------------------------------------------------------------------------ checks
def _clipping(ch: _Channel, sample_rate: float) -> tuple[list[SensorFinding], set[float]]:
    o, n = ch.options, len(ch.x)
    out, levels = [], set()
    block = max(MIN_BLOCK, round(o.clip_block_s * sample_rate))
    sides = clipped_sides(ch.x, o.clip_min_run, o.clip_min_fraction, o.clip_any_fraction, block)
    for side in sides:
        levels.add(side.level)
        whole = clip_text(side, n, o.clip_min_run)

        def describe(a: int, b: int, count: int, side=side, whole=whole) -> str:
            return (
                f"flat top at the channel's {side.side} {side.level:.6g}: {count} samples at "
                f"that value here (whole channel: {whole})"
            )

        idx = side.at_level
        out += ch.ranges("clipping", idx, idx + 1, describe)
    return out, levels


def _flat_line(ch: _Channel, sample_rate: float) -> tuple[list[SensorFinding], bool]:
    """Flat-line findings, and whether the whole channel is constant."""
    o, x, n = ch.options, ch.x, len(ch.x)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= o.flat_precision * max(abs(lo), abs(hi)):
        reason = (
            f"channel is constant (flat line at {lo:.6g}"
            + (f" to {hi:.6g}" if hi != lo else "")
            + "): the sensor gives no signal"
        )
        return [ch.finding("flat_line", 0, n, reason)], True
    block = max(MIN_BLOCK, round(o.flat_min_s * sample_rate))
    if n < 4 * block:
        return [], False
    stds, starts = _block_stds(x, block)
    typical = float(np.median(stds))
    # Exactly constant blocks are dropouts (held values); this check is for a level that collapsed.
    quiet = (stds < o.flat_ratio * typical) & (stds > 0)
    if not quiet.any():
        return [], False
    where = starts[quiet]

    def describe(a: int, b: int, count: int) -> str:
        level = float(stds[quiet][(where >= a) & (where < b)].max())
        return (
            f"level collapses: standard deviation at most {level:.3g} against "
            f"{typical:.3g} typical of the channel ({_db(level, typical)} dB; limit "
            f"{_db(o.flat_ratio, 1.0)} dB)"
        )

    # A collapse that starts or ends inside a block leaves that block's level up: the range is
    # widened by one block on either side so that it covers the whole stretch.
    lo_edge = np.maximum(where - block, 0)
    hi_edge = np.minimum(where + 2 * block, n)
    return ch.ranges("flat_line", lo_edge, hi_edge, describe), False


def _db(value: float, ref: float) -> str:
    if value <= 0 or ref <= 0:
        return "-inf"
    return f"{20.0 * np.log10(value / ref):.0f}"


def _dropouts(ch: _Channel, clipped: set[float]) -> list[SensorFinding]:
    o, x, n = ch.options, ch.x, len(ch.x)
    change = np.flatnonzero(x[1:] != x[:-1]) + 1
    starts = np.concatenate(([0], change))
    stops = np.concatenate((change, [n]))
    long = (stops - starts) >= o.dropout_min_run
    if not long.any():
        return []
    starts, stops = starts[long], stops[long]
    values = np.asarray(x[starts], dtype=np.float64)
    # Runs at a clipped rail are the clipping finding already.
    keep = ~np.isin(values, list(clipped)) if clipped else np.ones(len(starts), bool)
    starts, stops, values = starts[keep], stops[keep], values[keep]
    if len(starts) == 0:
        return []

    def describe(a: int, b: int, count: int) -> str:
        inside = (starts >= a) & (stops <= b)
        held = values[inside]
        longest = int((stops[inside] - starts[inside]).max())
        what = "zeros" if np.all(held == 0) else f"a held value ({held[0]:.6g})"
        runs = f"{count} runs" if count > 1 else "a run"
        return (
            f"{runs} of exactly repeated {what}, longest {longest} samples "
            f"(limit {o.dropout_min_run})"
        )

    return ch.ranges("dropout", starts, stops, describe)


def _spikes(ch: _Channel) -> list[SensorFinding]:
    o, x, n = ch.options, ch.x, len(ch.x)
    centre, scale = _robust(x)
    if scale <= 0:
        return []
    dev = np.abs(np.asarray(x, dtype=np.float32) - np.float32(centre))
    h = o.spike_neighbours
    cand = np.flatnonzero(dev > o.spike_factor * scale)
    # Near either end the ringing that would follow a real impact is not in the recording.
    cand = cand[(cand >= h) & (cand < n - h)]
    if len(cand) == 0:
        return []
    neighbour = np.zeros(len(cand), dtype=np.float32)
    for shift in (*range(-h, 0), *range(1, h + 1)):
        neighbour = np.maximum(neighbour, dev[cand + shift])
    spikes = cand[dev[cand] > o.spike_isolation * neighbour]
    if len(spikes) == 0:
        return []

    def describe(a: int, b: int, count: int) -> str:
        inside = spikes[(spikes >= a) & (spikes < b)]
        peak = int(inside[np.argmax(dev[inside])])
        what = f"{count} isolated samples" if count > 1 else "an isolated sample"
        return (
            f"{what}, largest {float(x[peak]):.6g} at sample {peak}, "
            f"{dev[peak] / scale:.0f} robust standard deviations from the median {centre:.3g} "
            f"(limit {o.spike_factor:g}) and over {o.spike_isolation:g} times its neighbours"
        )

    return ch.ranges("spike", spikes, spikes + 1, describe)


def _level(ch: _Channel, reference: SensorReference | None) -> list[SensorFinding]:
    """DC offset, drift and RMS range: properties of the whole recording."""
    o, x, n = ch.options, ch.x, len(ch.x)
    xd = np.asarray(x, dtype=np.float64)
    mean, std = float(xd.mean()), float(xd.std())
    out: list[SensorFinding] = []
    ref = _reference_index(reference, ch.name)
    dc_coupled = ref is not None and reference.dc_coupled[ref]
    if std > 0 and abs(mean) > o.dc_factor * std and not dc_coupled:
        out.append(
            ch.finding(
                "dc_offset", 0, n,
                f"mean {mean:.4g} is {abs(mean) / std:.3g} times the standard "
                f"deviation {std:.4g} (limit {o.dc_factor:g})",
            )
        )  # fmt: skip
    if n >= o.drift_blocks * MIN_BLOCK:
        block = n // o.drift_blocks
        body = xd[: block * o.drift_blocks].reshape(o.drift_blocks, block)
        means, within = body.mean(axis=1), float(body.std(axis=1).mean())
        spread = float(means.max() - means.min())
        if within > 0 and spread > o.drift_factor * within:
            out.append(
                ch.finding(
                    "drift", 0, n,
                    f"the mean of the {o.drift_blocks} blocks of the recording moves "
                    f"by {spread:.4g} ({', '.join(f'{m:.3g}' for m in means)}), "
                    f"{spread / within:.3g} times the standard deviation {within:.4g} within them "
                    f"(limit {o.drift_factor:g})",
                )
            )  # fmt: skip
    if ref is not None and std > 0:
        low, high = reference.log10_rms_low[ref], reference.log10_rms_high[ref]
        value = float(np.log10(std))
        if not low <= value <= high:
            median = 10 ** reference.log10_rms_median[ref]
            off = low - value if value < low else value - high
            where = "below" if value < low else "above"
            out.append(
                ch.finding(
                    "rms_range", 0, n,
                    f"RMS {std:.4g} is {off:.2g} decades {where} the training range "
                    f"{10**low:.3g}-{10**high:.3g} (median {median:.3g} "
                    f"over {reference.recordings} recordings)",
                )
            )  # fmt: skip
    return out


def _reference_index(reference: SensorReference | None, name: str) -> int | None:
    if reference is None or name not in reference.channels:
        return None
    return reference.channels.index(name)


# ------------------------------------------------------------------------------ public API
def check_recording(
    data: np.ndarray,
    channels: Sequence[str],
    file: str,
    sample_rate: float,
    reference: SensorReference | None = None,
    options: HealthOptions = DEFAULT_OPTIONS,
) -> list[SensorFinding]:
    """Every sensor-health finding of one recording, channel by channel, in :data:`KINDS` order.

    Args:
        data: float ``(channels, samples)`` waveform (a memory map is read, not copied whole).
        channels: the channel names, one per row.
        file: the recording's name in findings (its path relative to the data folder).
        sample_rate: samples per second of ``data``.
        reference: the training data's RMS range (``None``: the RMS check is skipped).
        options: the thresholds.

    Returns:
        The findings; empty for a healthy recording.
    """
    if data.ndim != 2 or data.shape[0] != len(channels):
        raise ValueError(f"{file}: expected ({len(channels)}, samples), got {data.shape}")
    gap = max(1, round(options.merge_gap_s * sample_rate))
    out: list[SensorFinding] = []
    for c, name in enumerate(channels):
        x = data[c]
        if len(x) == 0:
            continue
        ch = _Channel(x, file, str(name), gap, options)
        flat, constant = _flat_line(ch, sample_rate)
        if constant:
            out += flat
            continue
        clipping, levels = _clipping(ch, sample_rate)
        out += clipping + flat + _dropouts(ch, levels) + _spikes(ch) + _level(ch, reference)
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(out, key=lambda f: (channels.index(f.channel), order[f.kind], f.start))


def fit_reference(
    waveforms: Sequence[np.ndarray],
    channels: Sequence[str],
    options: HealthOptions = DEFAULT_OPTIONS,
) -> SensorReference:
    """The training data's per-channel RMS range and DC-coupled channels.

    Robust statistics of the recordings' log RMS (median, ``1.4826 * MAD``), so a few faulty
    recordings among them do not move the range; constant channels are left out of the fit.

    Args:
        waveforms: the training recordings, ``(channels, samples)`` each.
        channels: the channel names.
        options: ``rms_spread``, ``rms_margin_decades`` and ``dc_factor`` are used.
    """
    if not waveforms:
        raise ValueError("the sensor-health reference needs at least one recording")
    stats = np.array(
        [
            [(np.mean(row, dtype=np.float64), np.std(row, dtype=np.float64)) for row in w]
            for w in waveforms
        ]
    )  # (recordings, channels, 2)
    medians, lows, highs, dc = [], [], [], []
    for c in range(len(channels)):
        mean, std = stats[:, c, 0], stats[:, c, 1]
        live = std > 0
        logs = np.log10(std[live]) if live.any() else np.zeros(1)
        centre = float(np.median(logs))
        spread = MAD_TO_STD * float(np.median(np.abs(logs - centre)))
        half = options.rms_spread * spread + options.rms_margin_decades
        medians.append(centre)
        lows.append(centre - half)
        highs.append(centre + half)
        ratio = np.abs(mean[live]) / std[live] if live.any() else np.zeros(1)
        dc.append(bool(np.median(ratio) > options.dc_factor))
    return SensorReference(
        channels=[str(c) for c in channels],
        log10_rms_median=medians,
        log10_rms_low=lows,
        log10_rms_high=highs,
        dc_coupled=dc,
        recordings=len(waveforms),
    )


def reference_from_metadata(extra: dict[str, str], source: str = "") -> SensorReference | None:
    """The reference of an exported model (``ModelMetadata.extra``); ``None`` for older models.

    Raises:
        DataValidationError: the entry is there but malformed.
    """
    text = extra.get(METADATA_KEY)
    if text is None:
        return None
    from damage_lightning.errors import DataValidationError, Problem

    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise DataValidationError(Problem(source, f"metadata {METADATA_KEY}", str(exc))) from None
    return SensorReference.from_json(obj, source=source, where=f"metadata {METADATA_KEY}")


@dataclass
class WindowHealth:
    """Which windows of a recording pass the gate.

    Args:
        ok: ``(n_windows,)`` bool, ``False`` where the window overlaps a finding.
        reasons: per window, the findings it overlaps (``"clipping floor1; spike base"``), empty
            for a window that passes.
    """

    ok: np.ndarray
    reasons: list[str]

    @property
    def n_flagged(self) -> int:
        """Windows that overlap a finding."""
        return int(len(self.ok) - np.count_nonzero(self.ok))


def window_health(
    findings: Sequence[SensorFinding], starts: np.ndarray, window: int
) -> WindowHealth:
    """Flag the windows ``[start, start + window)`` of one recording that overlap a finding.

    The one window-flagging rule: training's ``exclude_windows``, ``predict`` and the gateway use
    it.

    Args:
        findings: the recording's findings (:func:`check_recording`).
        starts: start sample of each window.
        window: window length in samples.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ok = np.ones(len(starts), dtype=bool)
    labels: list[list[str]] = [[] for _ in range(len(starts))]
    for f in findings:
        hit = np.flatnonzero((starts < f.stop) & (starts + window > f.start))
        if len(hit) == 0:
            continue
        ok[hit] = False
        tag = f"{f.kind} {f.channel}"
        for i in hit:
            if tag not in labels[i]:
                labels[i].append(tag)
    return WindowHealth(ok, ["; ".join(t) for t in labels])


def finding_line(f: SensorFinding) -> str:
    """One finding as a line of text: file, channel, samples and reason."""
    return f"{f.file} (channel '{f.channel}', samples {f.start}-{f.stop}): {f.kind}: {f.reason}"


def index_health(
    recording: np.ndarray,
    start: np.ndarray,
    findings: Sequence[Sequence[SensorFinding]],
    window: int,
) -> WindowHealth:
    """:func:`window_health` of windows of several recordings, given as ``(recording, start)``.

    Args:
        recording: index of each window's recording into ``findings``.
        start: start sample of each window.
        findings: the findings of every recording.
        window: window length in samples.
    """
    recording = np.asarray(recording, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    ok = np.ones(len(start), dtype=bool)
    reasons = [""] * len(start)
    for r in np.unique(recording):
        if not findings[r]:
            continue
        rows = np.flatnonzero(recording == r)
        one = window_health(findings[r], start[rows], window)
        ok[rows] = one.ok
        for i, text in zip(rows, one.reasons, strict=True):
            reasons[i] = text
    return WindowHealth(ok, reasons)
