"""Figures of a classifier's verdicts: the reliability diagram and coverage against accuracy.

Drawn from the model card's ``test_metrics.calibration`` (reliability bins before and after
temperature scaling) and ``test_metrics.recording`` (the coverage curve of the recordings), at
the printed size like every report figure.
"""

from __future__ import annotations

from pathlib import Path

from damage_lightning.card import CalibrationCard, RecordingLevel
from damage_lightning.report.figures import (
    COVERAGE_NAME,
    DPI,
    FIG_WIDTH_IN,
    RELIABILITY_NAME,
    FigureFile,
    _rc,
    _save,
)
from damage_lightning.report.record import RunRecord


def reliability_figure(calibration: CalibrationCard, path: Path) -> FigureFile:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(FIG_WIDTH_IN, 3.0), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (name, figures) in zip(
            axes, (("before", calibration.before), ("after", calibration.after)), strict=True
        ):
            bins = figures.reliability
            total = sum(b.count for b in bins) or 1
            centres = [(b.lo + b.hi) / 2 for b in bins]
            width = (bins[0].hi - bins[0].lo) * 0.9 if bins else 0.06
            ax.bar(
                centres,
                [b.accuracy for b in bins],
                width=width,
                color="#4c72b0",
                alpha=0.8,
                label="accuracy",
            )
            ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="perfect calibration")
            ax.scatter(
                [b.confidence for b in bins],
                [b.accuracy for b in bins],
                s=[8 + 120 * b.count / total for b in bins],
                color="#c44e52",
                zorder=3,
                label="mean confidence (size: windows)",
            )
            title = (
                "before scaling (T = 1)"
                if name == "before"
                else (f"after scaling (T = {calibration.temperature:.2f})")
            )
            ax.set_title(f"{title}: ECE {figures.ece:.3f}")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("confidence (top probability)")
        axes[0].set_ylabel("accuracy in the bin")
        axes[0].legend(loc="upper left", fontsize=7)
        _save(fig, path)
    return FigureFile(
        path,
        FIG_WIDTH_IN,
        3.0,
        f"Reliability of the {calibration.n_windows} test windows: bars are the accuracy of the "
        "windows in each confidence bin; a calibrated model's bars reach the diagonal.",
        "reliability",
    )


def coverage_figure(recording: RecordingLevel, path: Path) -> FigureFile | None:
    """Accuracy of the decided test recordings against the share decided (abstain floors)."""
    import matplotlib
    from matplotlib.figure import Figure

    curve = recording.coverage_curve
    if len(curve) < 2:
        return None
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(FIG_WIDTH_IN, 2.8), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        ax.step(
            [p.coverage for p in curve],
            [p.accuracy for p in curve],
            where="post",
            color="#4c72b0",
        )
        ax.scatter([p.coverage for p in curve], [p.accuracy for p in curve], s=8, color="#4c72b0")
        floor = recording.recording.abstain
        if floor is not None and recording.recording.coverage is not None:
            ax.axvline(recording.recording.coverage, color="#c44e52", ls="--", lw=1)
            ax.annotate(
                f"abstain floor {floor:g}",
                (recording.recording.coverage, 0.02),
                xycoords=("data", "axes fraction"),
                color="#c44e52",
                fontsize=7,
                ha="right",
            )
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("coverage (share of test recordings decided)")
        ax.set_ylabel("accuracy of the decided")
        low = min(p.accuracy for p in curve)
        ax.set_ylim(max(0.0, low - 0.05), 1.01)
        _save(fig, path)
    return FigureFile(
        path,
        FIG_WIDTH_IN,
        2.8,
        "Coverage against accuracy: recordings whose confidence is below a floor come back "
        "unknown; moving the floor up trades coverage for accuracy.",
        "coverage",
    )


def verdict_figures(record: RunRecord, out_dir: Path) -> list[FigureFile]:
    """The reliability diagram and the coverage curve, where the card has their data."""
    test = record.card.test_metrics if record.card else None
    figures: list[FigureFile] = []
    if test is None:
        return figures
    if test.calibration is not None and test.calibration.after.reliability:
        figures.append(reliability_figure(test.calibration, Path(out_dir) / RELIABILITY_NAME))
    if test.recording is not None:
        fig = coverage_figure(test.recording, Path(out_dir) / COVERAGE_NAME)
        if fig is not None:
            figures.append(fig)
    return figures
