"""Explanations in hertz: the typed ``attribution.json``, its options, and bins summed into bands.

The attribution itself is computed on the torch side (``damage_lightning/tasks/attribution.py``);
this module holds what a report, a notebook or a gateway reads back: per class, per sensor
channel and per frequency cell, the mean contribution to the class's log-odds of the test windows
of that class, measured against a physically neutral baseline. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from damage_lightning.card import AttributionCard, JsonRecord, TopBand

ATTRIBUTION_FILE = "attribution.json"
METHODS = ("integrated_gradients", "occlusion")
#: Band widths the automatic choice picks from, Hz (times powers of ten).
_NICE = (1.0, 2.0, 5.0)
#: The automatic band width gives at most this many bands over the spectrogram's range.
MAX_AUTO_BANDS = 32
#: Bands named per class in the model card and the report.
TOP_BANDS = 3


@dataclass(frozen=True)
class AttributionOptions:
    """Which frequency bands of which channels drive each class (``--attribution.*``).

    Args:
        enabled: compute ``attribution.json`` at the end of ``fit`` (classifiers only; a
            novelty detector is skipped).
        method: ``integrated_gradients`` (every spectrogram row, from the baseline to the
            window in ``steps`` steps) or ``occlusion`` (each band of each channel in turn
            replaced by the baseline).
        windows_per_class: test windows attributed per class, evenly spread over the class's
            test windows (so over its recordings).
        steps: integration steps of ``integrated_gradients``.
        band_hz: width of the bands in Hz (the report's heatmap, the card's top bands and the
            occluded bands); ``None`` picks 1, 2 or 5 times a power of ten giving at most
            32 bands.
        reference: the healthy class whose mean training spectrogram is the baseline of every
            other class; ``None`` takes a class named ``undamaged``, ``healthy``, ``normal``,
            ``intact`` or ``baseline`` when there is one.

    Raises:
        ValueError: an option is out of range.
    """

    enabled: bool = True
    method: Literal["integrated_gradients", "occlusion"] = "integrated_gradients"
    windows_per_class: int = 8
    steps: int = 16
    band_hz: float | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.windows_per_class < 1:
            raise ValueError(f"windows_per_class must be at least 1, got {self.windows_per_class}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.band_hz is not None and not (math.isfinite(self.band_hz) and self.band_hz > 0):
            raise ValueError(f"band_hz must be positive, got {self.band_hz}")


REFERENCE_NAMES = ("undamaged", "healthy", "normal", "intact", "baseline")


def reference_class(class_names: list[str], wanted: str | None = None) -> str | None:
    """The class that serves as the healthy baseline, or ``None`` when there is none.

    Args:
        class_names: the classifier's classes.
        wanted: a class named by the user (``--attribution.reference``).

    Raises:
        ValueError: ``wanted`` is not one of the classes.
    """
    if wanted is not None:
        if wanted not in class_names:
            raise ValueError(
                f"attribution.reference {wanted!r} is not a class ({', '.join(class_names)})"
            )
        return wanted
    lower = {name.lower(): name for name in class_names}
    return next((lower[n] for n in REFERENCE_NAMES if n in lower), None)


# ----------------------------------------------------------------------------------------------
# Bins to bands


def auto_band_hz(low_hz: float, high_hz: float) -> float:
    """The smallest of 1, 2, 5 x 10^k Hz giving at most :data:`MAX_AUTO_BANDS` bands.

    Args:
        low_hz: the lowest frequency to cover.
        high_hz: the highest frequency to cover.
    """
    span = max(float(high_hz) - float(low_hz), 1e-9)
    decade = 10.0 ** math.floor(math.log10(span / MAX_AUTO_BANDS))
    # 10 x decade always fits: decade <= span / MAX_AUTO_BANDS < 10 x decade.
    return next(
        n * decade
        for n in (*_NICE, 10.0)
        if math.ceil(span / (n * decade) - 1e-9) <= MAX_AUTO_BANDS
    )


def band_edges(centres_hz: np.ndarray, band_hz: float) -> np.ndarray:
    """Edges of bands ``band_hz`` wide on multiples of ``band_hz`` that hold every centre.

    Args:
        centres_hz: the centre frequencies of the rows to be summed.
        band_hz: the band width.

    Returns:
        ``(n_bands + 1,)`` increasing edges.
    """
    centres = np.asarray(centres_hz, dtype=np.float64)
    first = math.floor(centres.min() / band_hz + 1e-9)
    last = max(math.ceil(centres.max() / band_hz - 1e-9), first + 1)
    return np.arange(first, last + 1, dtype=np.float64) * band_hz


def band_index(centres_hz: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The band of each row: the one whose ``[low, high)`` holds its centre.

    A centre on an inner edge belongs to the band above it; one on the top edge to the top band.

    Args:
        centres_hz: ``(rows,)`` centre frequencies.
        edges: ``(n_bands + 1,)`` increasing band edges.

    Raises:
        ValueError: a centre lies outside the edges.
    """
    centres = np.asarray(centres_hz, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if centres.size and (centres.min() < edges[0] or centres.max() > edges[-1]):
        raise ValueError(
            f"rows at {centres.min():g}-{centres.max():g} Hz lie outside the bands "
            f"{edges[0]:g}-{edges[-1]:g} Hz"
        )
    index = np.searchsorted(edges, centres, side="right") - 1
    return np.minimum(index, len(edges) - 2)


def band_sum(values: np.ndarray, centres_hz: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sum the last axis of ``values`` (one entry per row) into bands.

    Args:
        values: ``(..., rows)``.
        centres_hz: ``(rows,)`` centre frequency of each row.
        edges: ``(n_bands + 1,)`` band edges (see :func:`band_index` for the rule at an edge).

    Returns:
        ``(..., n_bands)``; a band without rows sums to 0.
    """
    values = np.asarray(values, dtype=np.float64)
    index = band_index(centres_hz, edges)
    if values.shape[-1] != index.size:
        raise ValueError(f"values have {values.shape[-1]} rows, the axis has {index.size}")
    member = np.zeros((index.size, len(edges) - 1))
    member[np.arange(index.size), index] = 1.0
    return values @ member


# ----------------------------------------------------------------------------------------------
# attribution.json


@dataclass(kw_only=True)
class ClassAttribution(JsonRecord):
    """One class's attribution: the mean over its attributed test windows.

    Args:
        name: the class.
        windows: test windows of the class that were attributed.
        recordings: the recordings those windows come from (paths as in ``splits.json``).
        log_odds: mean log-odds of the class on those windows.
        baseline_log_odds: log-odds of the class at the baseline spectrogram.
        values: ``channels x cells``: the mean contribution of each cell to the log-odds
            (positive: evidence for the class, against the baseline).
    """

    FILE: ClassVar[str] = ATTRIBUTION_FILE

    name: str
    windows: int
    recordings: list[str]
    log_odds: float
    baseline_log_odds: float
    values: list[list[float]]


@dataclass(kw_only=True)
class Attribution(JsonRecord):
    """``attribution.json``: which frequencies of which channels drive each class's decision.

    The target is the log-odds of the true class, ``logit_c - logsumexp(other logits)``, of test
    windows of class ``c``. The baseline of a class is the mean normalised training spectrogram of
    the reference (healthy) class; for the reference class itself, and for every class when
    there is no reference, it is the mean of the other classes' training windows. The frequency
    cells are spectrogram rows (``integrated_gradients``) or the occluded bands (``occlusion``),
    each with its centre and edges in Hz.

    Args:
        method: ``integrated_gradients`` or ``occlusion``.
        target: what is attributed, in words.
        baseline: what the windows are compared with, in words.
        reference_class: the healthy class of the baseline (``None`` when there is none).
        split: the split the windows come from.
        windows_per_class: the most windows attributed per class.
        steps: integration steps (``integrated_gradients``), else ``None``.
        band_hz: the band width of the card's and the report's bands.
        channels: the sensor channels, in input order.
        freq_hz: ``(cells,)`` centre frequency of each cell.
        freq_low_hz: lower edge of each cell.
        freq_high_hz: upper edge of each cell.
        classes: one record per class, in the model's output order.
        wall_time_s: seconds the attribution took.
    """

    FILE: ClassVar[str] = ATTRIBUTION_FILE

    method: str
    target: str
    baseline: str
    reference_class: str | None
    split: str
    windows_per_class: int
    steps: int | None = None
    band_hz: float
    channels: list[str]
    freq_hz: list[float]
    freq_low_hz: list[float]
    freq_high_hz: list[float]
    classes: list[ClassAttribution]
    wall_time_s: float

    def values(self, name: str) -> np.ndarray:
        """``(channels, cells)`` mean contributions of class ``name``.

        Raises:
            KeyError: no such class.
        """
        for record in self.classes:
            if record.name == name:
                return np.asarray(record.values, dtype=np.float64)
        raise KeyError(f"no attribution for class {name!r}")

    def edges(self, band_hz: float | None = None) -> np.ndarray:
        """Band edges in Hz (of ``band_hz``, default the record's own width)."""
        return band_edges(np.asarray(self.freq_hz), band_hz or self.band_hz)

    def evidence(self, name: str, band_hz: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Share of the class's positive evidence in each channel and band.

        Cells are summed into bands first (contributions of opposite sign within a band cancel),
        then negative bands are set to zero and the rest divided by their sum.

        Args:
            name: the class.
            band_hz: band width (default: the record's).

        Returns:
            ``(shares, edges)``: ``(channels, bands)`` shares summing to 1 (all zero when the
            class has no positive evidence) and the ``(bands + 1,)`` edges.
        """
        edges = self.edges(band_hz)
        bands = np.clip(band_sum(self.values(name), np.asarray(self.freq_hz), edges), 0.0, None)
        total = bands.sum()
        return (bands / total if total > 0 else bands), edges

    def top_bands(self, name: str, n: int = TOP_BANDS) -> list[TopBand]:
        """The ``n`` channel-band pairs with the largest share of the class's positive evidence."""
        shares, edges = self.evidence(name)
        order = np.argsort(shares, axis=None, kind="stable")[::-1][:n]
        top = []
        for flat in order:
            c, b = np.unravel_index(flat, shares.shape)
            if shares[c, b] <= 0:
                break
            top.append(
                TopBand(
                    channel=self.channels[c],
                    low_hz=float(edges[b]),
                    high_hz=float(edges[b + 1]),
                    share=round(float(shares[c, b]), 4),
                )
            )
        return top

    def card(self, path: str = ATTRIBUTION_FILE) -> AttributionCard:
        """The model card's summary: how it was computed and each class's top bands.

        Args:
            path: the file, relative to the run folder.
        """
        return AttributionCard(
            path=path,
            method=self.method,
            baseline=self.baseline,
            reference_class=self.reference_class,
            split=self.split,
            windows_per_class=self.windows_per_class,
            band_hz=self.band_hz,
            wall_time_s=self.wall_time_s,
            top_bands={c.name: self.top_bands(c.name) for c in self.classes},
        )


def reading(name: str, top: list[TopBand]) -> str:
    """One line an engineer reads: ``story1: floor1 210-220 Hz (14 %), ...``.

    Args:
        name: the class.
        top: its top bands (:meth:`Attribution.top_bands`).
    """
    if not top:
        return f"{name}: no frequency band adds evidence for this class"
    parts = [f"{t.channel} {t.low_hz:g}-{t.high_hz:g} Hz ({100 * t.share:.0f} %)" for t in top]
    return f"{name}: " + ", ".join(parts)


__all__ = [
    "ATTRIBUTION_FILE",
    "METHODS",
    "Attribution",
    "AttributionOptions",
    "ClassAttribution",
    "auto_band_hz",
    "band_edges",
    "band_index",
    "band_sum",
    "reading",
    "reference_class",
]
