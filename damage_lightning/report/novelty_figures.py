"""Figures of a novelty detector's test: score histograms per class, scores over time.

Drawn from ``novelty_scores.csv`` (every test window's score) and the thresholds in the model
card's ``novelty`` section, at the printed size like every report figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from damage_lightning.card import NoveltyCard
from damage_lightning.evaluation.scores_file import SCORES_FILE, read_scores
from damage_lightning.report.figures import (
    DPI,
    FIG_WIDTH_IN,
    MAX_FIG_HEIGHT_IN,
    NOVELTY_HISTOGRAM_NAME,
    NOVELTY_TIMELINE_NAME,
    FigureFile,
    _rc,
    _save,
    plot_label,
)
from damage_lightning.report.record import RunRecord

# Recordings drawn per class in the scores-over-time figure (the first ones by name).
RECORDINGS_PER_CLASS = 4


def _log_bins(values: np.ndarray, n: int = 60) -> np.ndarray:
    positive = values[values > 0]
    if positive.size == 0:
        return np.linspace(0, 1, n)
    lo, hi = positive.min(), max(positive.max(), positive.min() * 1.01)
    return np.geomspace(lo, hi, n)


def score_histograms(frame: Any, card: NoveltyCard, path: Path) -> FigureFile | None:
    """One panel per damage class: its window scores against the healthy test windows'."""
    import matplotlib
    from matplotlib.figure import Figure

    healthy = frame[frame["label"] == card.healthy_label]["score"].to_numpy()
    classes = [c for c in dict.fromkeys(frame["label"]) if c != card.healthy_label]
    panels = classes or [card.healthy_label]
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    bins = _log_bins(frame["score"].to_numpy())
    height = min(MAX_FIG_HEIGHT_IN, 0.6 + 2.0 * rows)
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(FIG_WIDTH_IN, height), dpi=DPI, layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
        for ax, name in zip(axes, panels, strict=False):
            ax.hist(healthy, bins=bins, color="0.55", alpha=0.7, density=True, label="healthy")
            if name != card.healthy_label:
                mine = frame[frame["label"] == name]["score"].to_numpy()
                ax.hist(mine, bins=bins, color="tab:red", alpha=0.55, density=True, label="damaged")
            ax.axvline(
                card.window_threshold.threshold,
                color="black",
                linestyle="--",
                linewidth=1.1,
                label="window threshold",
            )
            ax.set_xscale("log")
            ax.set_title(plot_label(name, 40), loc="left")
            ax.set_xlabel("window score")
            ax.legend(loc="upper right", framealpha=0.85)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        _save(fig, path)
    caption = (
        "Window scores of the test split: held-out healthy windows (grey) against each damage "
        f"class (red), log scale; dashed: the window threshold "
        f"({card.window_threshold.threshold:.4g}, calibrated at "
        f"{card.window_threshold.false_alarm_rate:g} false alarms per window)."
    )
    return FigureFile(path, FIG_WIDTH_IN, height, caption, "novelty_histogram")


def scores_over_time(
    frame: Any, card: NoveltyCard, sample_rate: float, path: Path
) -> FigureFile | None:
    """Window scores against time in the recording, for a few recordings of each class."""
    import matplotlib
    from matplotlib.figure import Figure

    classes = list(dict.fromkeys([card.healthy_label, *frame["label"]]))
    colours = matplotlib.colormaps["tab10"]
    height = 3.4
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(FIG_WIDTH_IN, height), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        for k, name in enumerate(classes):
            mine = frame[frame["label"] == name]
            colour = "0.45" if name == card.healthy_label else colours(k % 10)
            for i, (_, rec) in enumerate(sorted(mine.groupby("recording"), key=lambda g: g[0])):
                if i >= RECORDINGS_PER_CLASS:
                    break
                rec = rec.sort_values("start")
                ax.plot(
                    rec["start"] / sample_rate,
                    rec["score"],
                    color=colour,
                    linewidth=1.0,
                    marker="o",
                    markersize=2,
                    label=plot_label(name, 30) if i == 0 else None,
                )
        ax.axhline(
            card.window_threshold.threshold,
            color="black",
            linestyle="--",
            linewidth=1.1,
            label="window threshold",
        )
        ax.set_yscale("log")
        ax.set_xlabel("time in recording (s)")
        ax.set_ylabel("window score")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), framealpha=0.85)
        _save(fig, path)
    caption = (
        f"Scores over time: the first {RECORDINGS_PER_CLASS} test recordings of each class, one "
        "line per recording, against the window threshold (dashed)."
    )
    return FigureFile(path, FIG_WIDTH_IN, height, caption, "novelty_time")


def novelty_figures(record: RunRecord, out_dir: Path) -> list[FigureFile]:
    """The novelty figures the run folder allows (none for a classifier)."""
    card = record.card
    if card is None or card.novelty is None or record.run_dir is None:
        return []
    frame = read_scores(record.run_dir / SCORES_FILE)
    if frame is None or frame.empty:
        return []
    figures = [
        score_histograms(frame, card.novelty, out_dir / NOVELTY_HISTOGRAM_NAME),
        scores_over_time(
            frame, card.novelty, card.input.sample_rate, out_dir / NOVELTY_TIMELINE_NAME
        ),
    ]
    return [f for f in figures if f is not None]
