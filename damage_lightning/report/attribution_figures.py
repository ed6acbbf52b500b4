"""The attribution figure: one heatmap per class, sensor channels against frequency bands in Hz.

Drawn from ``attribution.json`` (:class:`~damage_lightning.evaluation.attribution.Attribution`)
at the printed size, like every report figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from damage_lightning.evaluation.attribution import Attribution
from damage_lightning.report.figures import (
    ATTRIBUTION_NAME,
    DPI,
    FIG_WIDTH_IN,
    MAX_FIG_HEIGHT_IN,
    SMALL_PT,
    FigureFile,
    _rc,
    _save,
    axis_labels,
    plot_label,
)
from damage_lightning.report.record import RunRecord

# Above this many classes the panels go into two columns.
ONE_COLUMN_CLASSES = 6


def heatmaps(result: Attribution, path: Path) -> FigureFile:
    """Each class's share of positive evidence per channel and band, one colour scale for all."""
    import matplotlib
    from matplotlib.figure import Figure

    names = [c.name for c in result.classes]
    shares = [result.evidence(name)[0] for name in names]
    edges = result.edges()
    cols = 1 if len(names) <= ONE_COLUMN_CLASSES else 2
    rows = math.ceil(len(names) / cols)
    # Five classes of four channels fit on the section's first page, under its table.
    panel = 0.42 + 0.15 * len(result.channels)
    height = min(MAX_FIG_HEIGHT_IN, 0.6 + rows * panel)
    vmax = max((float(s.max()) for s in shares), default=0.0) or 1.0
    channels = axis_labels(result.channels, 14)
    with matplotlib.rc_context({**_rc(), "axes.grid": False}):
        fig = Figure(figsize=(FIG_WIDTH_IN, height), dpi=DPI, layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharex=True).ravel())
        image = None
        for ax, name, share in zip(axes, names, shares, strict=False):
            image = ax.imshow(
                100 * share,
                aspect="auto",
                cmap="Reds",
                vmin=0.0,
                vmax=100 * vmax,
                extent=(edges[0], edges[-1], len(channels) - 0.5, -0.5),
                interpolation="nearest",
            )
            ax.set_yticks(range(len(channels)), channels)
            ax.set_title(plot_label(name, 60), loc="left", fontsize=SMALL_PT + 0.5)
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        for ax in axes[max(0, len(names) - cols) : len(names)]:
            ax.set_xlabel("frequency (Hz)")
        if image is not None:
            bar = fig.colorbar(image, ax=list(axes[: len(names)]), fraction=0.04, pad=0.02)
            bar.set_label("share of the class's evidence (%)")
            bar.ax.tick_params(labelsize=SMALL_PT)
        _save(fig, path)
    caption = (
        f"Which frequencies of which sensors drive each class: the share of the class's positive "
        f"evidence in bands of {result.band_hz:g} Hz ({_method(result)} of the log-odds of the "
        f"true class on up to {result.windows_per_class} {result.split} windows per class, "
        f"against {result.baseline})."
    )
    return FigureFile(path, FIG_WIDTH_IN, height, caption, "attribution")


def _method(result: Attribution) -> str:
    if result.method == "integrated_gradients":
        return f"integrated gradients, {result.steps} steps,"
    return "band occlusion"


def attribution_figures(record: RunRecord, out_dir: Path) -> list[FigureFile]:
    """The heatmap figure, when the run folder has ``attribution.json``."""
    if record.attribution is None or not record.attribution.classes:
        return []
    return [heatmaps(record.attribution, Path(out_dir) / ATTRIBUTION_NAME)]
