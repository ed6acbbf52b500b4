"""Matplotlib figures of the training report (training curves, confusion matrices) as PNG files.

Figures are drawn at the size they have in the PDF (the text width of an A4 page), so the font
sizes set here are the printed sizes. Only the object-oriented API with the Agg canvas is used:
no pyplot state, no display needed.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from damage_lightning.artifacts import atomic_write_bytes
from damage_lightning.card import ModelCard, TrainingHistory
from damage_lightning.report.facts import class_names, confusion_matrix
from damage_lightning.report.record import RunRecord
from damage_lightning.report.text import as_number, clean_text

FIG_WIDTH_IN = 6.5
DPI = 160
FONT_PT = 9.0
SMALL_PT = 8.0
MAX_FIG_HEIGHT_IN = 8.6
CURVES_NAME = "training_curves.png"
CM_COUNTS_NAME = "confusion_matrix.png"
CM_NORMALISED_NAME = "confusion_matrix_normalised.png"
# Drawn by report/novelty_figures.py for novelty detectors.
NOVELTY_HISTOGRAM_NAME = "novelty_score_histograms.png"
NOVELTY_TIMELINE_NAME = "novelty_scores_over_time.png"
# Drawn by report/verdict_figures.py for classifiers.
RELIABILITY_NAME = "reliability_diagram.png"
COVERAGE_NAME = "coverage_accuracy.png"
# Drawn by report/attribution_figures.py for classifiers with attribution.json.
ATTRIBUTION_NAME = "attribution_heatmaps.png"
FIGURE_NAMES = (
    CURVES_NAME,
    CM_COUNTS_NAME,
    CM_NORMALISED_NAME,
    NOVELTY_HISTOGRAM_NAME,
    NOVELTY_TIMELINE_NAME,
    RELIABILITY_NAME,
    COVERAGE_NAME,
    ATTRIBUTION_NAME,
)
# Above this many classes the per-cell numbers would be smaller than SMALL_PT; colours remain.
MAX_ANNOTATED_CLASSES = 14


@dataclass(frozen=True)
class FigureFile:
    """A PNG written for the report.

    Args:
        path: the PNG file.
        width_in: width at which it is drawn in the PDF, in inches (its fonts are sized for this).
        height_in: height in the PDF, in inches.
        caption: one sentence under the figure.
        kind: ``"curves"``, ``"confusion_counts"`` or ``"confusion_normalised"``.
    """

    path: Path
    width_in: float
    height_in: float
    caption: str
    kind: str


def plot_label(value: Any, max_len: int = 30) -> str:
    """Text that matplotlib draws literally: cleaned, shortened, ``$`` escaped (no mathtext).

    Long names are shortened in the middle, since class names often share a prefix and differ
    at the end (``story1_stiffness_loss``, ``story2_stiffness_loss``).
    """
    text = clean_text(value, newlines=False)
    if len(text) > max_len:
        head = (max_len - 1) // 2
        text = text[:head] + "…" + text[len(text) - (max_len - 1 - head) :]
    return text.replace("$", r"\$")


def axis_labels(names: list[str], max_len: int = 30) -> list[str]:
    """Short, distinct tick labels for the classes (numbered when shortening makes twins)."""
    labels = [plot_label(name, max_len) for name in names]
    if len(set(labels)) < len(labels):
        labels = [f"{i}: {plot_label(name, max_len - 4)}" for i, name in enumerate(names)]
    return labels


def _rc() -> dict[str, Any]:
    return {
        "font.size": FONT_PT,
        "axes.titlesize": FONT_PT + 0.5,
        "axes.labelsize": FONT_PT,
        "xtick.labelsize": SMALL_PT,
        "ytick.labelsize": SMALL_PT,
        "legend.fontsize": SMALL_PT,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "text.usetex": False,
    }


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def training_curves(history: TrainingHistory, path: Path) -> FigureFile | None:
    """Loss, accuracy and learning rate per epoch, best epoch and LR reductions marked.

    Returns ``None`` when the history has no epochs with numbers to plot.
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def series(key: str) -> tuple[list[int], list[float]]:
        values = ((e.epoch, as_number(getattr(e, key))) for e in history.epochs)
        pts = [(epoch, v) for epoch, v in values if v is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = []
    loss = [(k, lbl) for k, lbl in (("train_loss", "train"), ("val_loss", "validation"))]
    acc = [
        (k, lbl)
        for k, lbl in (("train_acc", "train acc"), ("val_acc", "val acc"), ("val_f1", "val F1"))
    ]
    for title, keys, ylabel in (
        ("Loss", loss, "cross-entropy"),
        ("Accuracy", acc, "fraction"),
        ("Learning rate", [("lr", "learning rate")], "lr"),
    ):
        present = [(k, lbl) for k, lbl in keys if series(k)[0]]
        if present:
            panels.append((title, present, ylabel))
    if not panels:
        return None

    best = history.best_epoch
    reductions = [r.epoch for r in history.lr_reductions]
    height = min(MAX_FIG_HEIGHT_IN, 0.5 + 2.55 * len(panels))
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(FIG_WIDTH_IN, height), dpi=DPI, layout="constrained")
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (title, keys, ylabel) in zip(axes, panels, strict=True):
            for key, label in keys:
                x, y = series(key)
                if key == "lr":
                    ax.step(x, y, where="post", label=label, color="tab:purple")
                    if all(v > 0 for v in y) and max(y) / min(y) > 3:
                        ax.set_yscale("log")
                    else:
                        # A flat or nearly flat schedule would get meaningless zoomed-in ticks.
                        ax.set_ylim(0, max(y) * 1.25 if max(y) > 0 else 1)
                        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
                else:
                    # Markers show single epochs; beyond ~60 they only thicken the line.
                    marker = "o" if len(x) <= 60 else None
                    ax.plot(x, y, marker=marker, markersize=2.5, linewidth=1.4, label=label)
            if best is not None:
                ax.axvline(
                    best,
                    color="tab:green",
                    linestyle="--",
                    linewidth=1.2,
                    label=f"best epoch {best}",
                )
            for i, epoch in enumerate(reductions):
                ax.axvline(
                    epoch,
                    color="0.45",
                    linestyle=":",
                    linewidth=1.2,
                    label="LR reduced" if i == 0 else None,
                )
            ax.set_title(title, loc="left")
            ax.set_ylabel(ylabel)
            ax.legend(loc="best", framealpha=0.85)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1].set_xlabel("epoch")
        _save(fig, path)
    marks = []
    if best is not None:
        marks.append(f"dashed green line: best epoch {best}")
    if reductions:
        marks.append(
            "dotted lines: learning-rate reductions at epoch(s) "
            + ", ".join(str(e) for e in reductions)
        )
    caption = "Training curves per epoch" + (f" ({'; '.join(marks)})" if marks else "") + "."
    return FigureFile(path, FIG_WIDTH_IN, height, caption, "curves")


def confusion_matrix_figure(
    matrix: list[list[float]], names: list[str], path: Path, *, normalised: bool
) -> FigureFile:
    """The test confusion matrix (rows: true class, columns: predicted), counts or row-normalised.

    Long class names are shortened with an ellipsis and the column labels rotated; cell values
    are printed for up to ``MAX_ANNOTATED_CLASSES`` classes.
    """
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=float)
    n = counts.shape[0]
    if normalised:
        totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)
    else:
        values = counts
    labels = axis_labels(names)
    longest = max((len(lbl) for lbl in labels), default=1)
    rotate = n > 4 or longest > 10
    char_in = SMALL_PT * 0.62 / 72
    label_w = longest * char_in
    x_space = (label_w * 0.75 if rotate else 0.25) + 0.55
    side = min(FIG_WIDTH_IN - label_w - 1.6, 5.0)
    height = min(MAX_FIG_HEIGHT_IN, side + x_space + 0.55)
    with matplotlib.rc_context({**_rc(), "axes.grid": False}):
        fig = Figure(figsize=(FIG_WIDTH_IN, height), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        vmax = 1.0 if normalised else max(float(np.nanmax(values)) if values.size else 1.0, 1.0)
        image = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0.0, vmax=vmax)
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        cbar.ax.tick_params(labelsize=SMALL_PT)
        cbar.set_label("fraction of the true class" if normalised else "test windows")
        ax.set_xticks(
            range(n),
            labels,
            rotation=45 if rotate else 0,
            ha="right" if rotate else "center",
            rotation_mode="anchor",
        )
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(
            "Confusion matrix, row-normalised (recall on the diagonal)"
            if normalised
            else "Confusion matrix (test windows)",
            loc="left",
        )
        if n <= MAX_ANNOTATED_CLASSES:
            size = FONT_PT if n <= 6 else SMALL_PT
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    text = ("–" if math.isnan(v) else f"{v:.2f}") if normalised else f"{int(v)}"
                    dark = not math.isnan(v) and v > 0.6 * vmax
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=size,
                        color="white" if dark else "black",
                    )
        _save(fig, path)
    caption = (
        "Test confusion matrix normalised per true class: each row sums to 1, the diagonal is "
        "the recall of the class."
        if normalised
        else "Test confusion matrix in windows: rows are the true class, columns the prediction."
    )
    if n > MAX_ANNOTATED_CLASSES:
        caption += f" Cell values are omitted for readability with {n} classes."
    return FigureFile(
        path,
        FIG_WIDTH_IN,
        height,
        caption,
        "confusion_normalised" if normalised else "confusion_counts",
    )


def confusion_from_card(card: ModelCard | None) -> tuple[list[list[float]], list[str]] | None:
    """The square test confusion matrix and its class names; ``None`` when absent or malformed."""
    rows = confusion_matrix(card.test_metrics if card else None)
    return None if rows is None else (rows, class_names(card, len(rows)))


def make_figures(record: RunRecord, out_dir: Path) -> list[FigureFile]:
    """Draw every figure the run's data allows, in the order they appear in the PDF."""
    out_dir = Path(out_dir)
    figures: list[FigureFile] = []
    with warnings.catch_warnings():
        # Scripts the font lacks (some class names) are drawn as boxes; that is not an error.
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph.*missing.*")
        warnings.filterwarnings("ignore", message=r".*Matplotlib currently does not support.*")
        curves = training_curves(record.history, out_dir / CURVES_NAME)
        if curves is not None:
            figures.append(curves)
        cm = confusion_from_card(record.card)
        if cm is not None:
            matrix, names = cm
            figures.append(
                confusion_matrix_figure(matrix, names, out_dir / CM_COUNTS_NAME, normalised=False)
            )
            figures.append(
                confusion_matrix_figure(
                    matrix, names, out_dir / CM_NORMALISED_NAME, normalised=True
                )
            )
        from damage_lightning.report.novelty_figures import novelty_figures

        figures += novelty_figures(record, out_dir)
        from damage_lightning.report.verdict_figures import verdict_figures

        figures += verdict_figures(record, out_dir)
        from damage_lightning.report.attribution_figures import attribution_figures

        figures += attribution_figures(record, out_dir)
    return figures
