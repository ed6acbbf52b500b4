"""The cross-validation summary: ``cv_summary.png`` and the short ``cv_report.pdf``.

The figure shows, per fold, the test accuracy of the model's windows and recordings beside the
trivial baseline's and the majority-class chance level; the PDF holds the settings, that figure
and the per-fold table with the mean and standard deviation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from damage_lightning.artifacts import atomic_write_bytes

if TYPE_CHECKING:
    from damage_lightning.cv import CVSettings, FoldResult

FIG_W_IN, FIG_H_IN = 6.5, 3.2


def summary_figure(results: list[FoldResult], path: Path) -> Path:
    """Grouped bars per fold: model windows, model recordings, baseline windows; chance marked."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [r.fold for r in results]
    series = [
        ("model, windows", [r.window_accuracy for r in results], "#1F4E79"),
        ("model, recordings", [r.recording_accuracy for r in results], "#6FA8DC"),
        ("baseline, windows", [r.baseline_window_accuracy for r in results], "#B0B0B0"),
    ]
    series = [s for s in series if any(v is not None for v in s[1])]
    x = np.arange(len(names))
    width = 0.8 / max(len(series), 1)
    with matplotlib.rc_context({"font.size": 8, "axes.grid": True, "grid.alpha": 0.3}):
        fig = Figure(figsize=(FIG_W_IN, FIG_H_IN), dpi=160, layout="constrained")
        ax = fig.subplots()
        for j, (label, values, color) in enumerate(series):
            ys = [np.nan if v is None else v for v in values]
            ax.bar(x + (j - (len(series) - 1) / 2) * width, ys, width, label=label, color=color)
        for i, r in enumerate(results):
            ax.hlines(r.chance_majority, i - 0.45, i + 0.45, colors="#C00000", linestyles="--")
        ax.plot([], [], color="#C00000", ls="--", label="chance (largest class)")
        ax.set_xticks(
            x,
            names,
            rotation=20 if len(names) > 4 else 0,
            ha="right" if len(names) > 4 else "center",
        )
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("test accuracy")
        ax.set_title("each fold tests a condition its training never saw")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=4, fontsize=7)
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_pdf(
    settings: CVSettings,
    results: list[FoldResult],
    summary: dict[str, dict[str, float | None]],
    figure: Path,
    path: Path,
    n_folds: int,
) -> Path:
    """The short PDF: what was left out, the figure, the per-fold table and its mean ± sd."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import inch
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer

    from damage_lightning.evaluation.baseline import NAME
    from damage_lightning.report.layout import MARGIN_X, MARGIN_Y, Styles, esc, table

    st = Styles()
    rule = {
        "same": f"another value of {settings.by!r}",
        "column": f"a value of {settings.val_by!r}",
        "last_block": "the last block of each training recording",
    }[settings.val_rule]
    story: list[Any] = [
        Paragraph(f"Cross-validation by {esc(settings.by)}", st.title),
        Paragraph(
            esc(
                f"{len(results)} of {n_folds} folds complete. Each fold tests the recordings of "
                f"one value of {settings.by!r} that its training and validation never saw; it "
                f"validates on {rule}. Baseline: {NAME}, fitted on the same training windows."
            ),
            st.body,
        ),
        Spacer(1, 6),
        Image(str(figure), width=FIG_W_IN * inch, height=FIG_H_IN * inch),
        Spacer(1, 8),
    ]
    header = [
        "fold",
        "test",
        "rec. train/val/test",
        "window acc",
        "window F1",
        "rec. acc",
        "baseline acc",
        "chance",
    ]
    rows: list[list[Any]] = []
    for r in results:
        rows.append(
            [
                r.fold,
                ", ".join(r.test_values),
                f"{r.n_train}/{r.n_val}/{r.n_test}",
                _fmt(r.window_accuracy),
                _fmt(r.window_f1_macro),
                _fmt(r.recording_accuracy),
                _fmt(r.baseline_window_accuracy),
                _fmt(r.chance_majority),
            ]
        )
    keys = [
        "window_accuracy",
        "window_f1_macro",
        "recording_accuracy",
        "baseline_window_accuracy",
        "chance_majority",
    ]
    for stat in ("mean", "sd"):
        rows.append([stat, "", "", *(_fmt(summary[k][stat]) for k in keys)])
    widths = [80, 80, 70, 55, 55, 50, 60, 45]
    story.append(
        table(
            header,
            rows,
            widths,
            st,
            numeric_cols={3, 4, 5, 6, 7},
            bold_rows={len(rows) - 2, len(rows) - 1},
        )
    )
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN_X,
        rightMargin=MARGIN_X,
        topMargin=MARGIN_Y,
        bottomMargin=MARGIN_Y,
        title=f"Cross-validation by {settings.by}",
        author="damage_lightning",
    )
    doc.build(story)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_summary(
    cv_dir: Path,
    settings: CVSettings,
    results: list[FoldResult],
    summary: dict[str, dict[str, float | None]],
    n_folds: int | None = None,
) -> list[Path]:
    """Write ``cv_summary.png`` and ``cv_report.pdf`` into ``cv_dir``; returns their paths."""
    from damage_lightning.cv import REPORT_PDF, SUMMARY_PNG

    if not results:
        return []
    figure = summary_figure(results, cv_dir / SUMMARY_PNG)
    pdf = summary_pdf(
        settings, results, summary, figure, cv_dir / REPORT_PDF, n_folds or len(results)
    )
    return [figure, pdf]
