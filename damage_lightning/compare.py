"""Compare finished runs: a Markdown and CSV table, validation curves, per-class F1, a short PDF.

Torch-free: it reads only the run folders' model card and history (the typed records of
``damage_lightning.card``) and ``config.yaml``. A folder without ``model_info.json`` whose
subfolders are runs (a cv folder, a tune folder) stands for those runs.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from damage_lightning.artifacts import atomic_write_bytes, atomic_write_text
from damage_lightning.card import HISTORY_FILE, MODEL_CARD_FILE, ModelCard, TrainingHistory
from damage_lightning.errors import OutputLocationError

CARD = MODEL_CARD_FILE
# Hyperparameters that describe the saved object, not a setting anyone chose.
NOT_SETTINGS = ("_class_path", "_instantiator")
# Shown even when equal across the runs, because a reader looks for them first.
ALWAYS_SHOWN = ("lr",)
RESULT_COLUMNS = (
    "params",
    "onnx_bytes",
    "epochs",
    "best_epoch",
    "best_val_loss",
    "test_loss",
    "test_acc_window",
    "test_f1_window",
    "test_acc_recording",
    "test_f1_recording",
    "epoch_time_s",
    "duration_s",
)
# Recording-level columns appear only when some card carries ``test_metrics.recording``.
RECORDING_COLUMNS = ("test_acc_recording", "test_f1_recording")
CURVES_NAME = "validation_curves.png"
F1_NAME = "per_class_f1.png"


@dataclass(frozen=True)
class RunSummary:
    """What the comparison shows of one run, read from its folder.

    Args:
        label: the run's name in tables and legends (unique within a comparison).
        run_dir: the run folder.
        settings: key settings (model, seed, window, front end, batch size, hyperparameters).
        results: the values of ``RESULT_COLUMNS`` (``None`` where the run has none).
        per_class_f1: test F1 per class (window level).
        val_curve: ``(epoch, val_loss, val_acc)`` per epoch of the history.
    """

    label: str
    run_dir: str
    settings: dict[str, Any]
    results: dict[str, Any]
    per_class_f1: dict[str, float | None] = field(default_factory=dict)
    val_curve: list[tuple[int, float | None, float | None]] = field(default_factory=list)

    @classmethod
    def from_run_dir(cls, run_dir: Path, label: str | None = None) -> RunSummary:
        """Read a finished run folder (its ``model_info.json`` must exist).

        Raises:
            DataValidationError: the card or the history does not fit its schema.
        """
        card = ModelCard.read(run_dir / MODEL_CARD_FILE)
        history_file = run_dir / HISTORY_FILE
        history = TrainingHistory.read(history_file) if history_file.is_file() else None
        epochs = history.epochs if history else []
        frontend = card.input.frontend
        kind = frontend.get("kind")
        shown = (kind, frontend.get("n_fft"), frontend.get("n_mels") if kind == "mel" else None)
        settings: dict[str, Any] = {
            "model": card.model.name,
            "seed": card.seed,
            "window": card.input.window_length,
            "hop": card.input.hop,
            "frontend": " ".join(str(v) for v in shown if v is not None) or None,
            "batch_size": (_read_yaml(run_dir / "config.yaml").get("data") or {}).get("batch_size"),
        }
        for key, value in card.model.hyperparameters.items():
            if key not in NOT_SETTINGS:
                settings[key] = value
        # Every front-end setting can differ between runs (a tune varies hop_length, say).
        for key, value in frontend.items():
            if key not in ("kind", "sample_rate", "n_channels"):
                settings[f"frontend.{key}"] = value
        times = [e.epoch_time_s for e in epochs if e.epoch_time_s is not None]
        test = card.test_metrics
        # Recording-level test metrics, where a card carries them (``test_metrics.recording``).
        level = test.recording.recording if test and test.recording else None
        onnx = (card.exports or {}).get("onnx")
        results = {
            "params": card.model.parameters,
            "onnx_bytes": onnx.size_bytes if onnx else None,
            "epochs": len(epochs),
            "best_epoch": card.best_epoch,
            "best_val_loss": history.best_val_loss if history else None,
            "test_loss": test.loss if test else None,
            "test_acc_window": test.accuracy if test else None,
            "test_f1_window": test.f1_macro if test else None,
            "test_acc_recording": level.accuracy if level else None,
            "test_f1_recording": level.f1_macro if level else None,
            "epoch_time_s": sum(times) / len(times) if times else None,
            "duration_s": card.duration_s,
        }
        per_class = {name: m.f1 for name, m in ((test.per_class if test else None) or {}).items()}
        curve = [(e.epoch, e.val_loss, e.val_acc) for e in epochs]
        return cls(label or run_dir.name, str(run_dir), settings, results, per_class, curve)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders named by ``paths``: run folders, folders of runs (cv, tune) or glob patterns.

    Args:
        paths: what the user named; patterns are expanded here for shells that do not.

    Raises:
        OutputLocationError: a path that does not exist, or no run found at all.
    """
    runs: list[Path] = []
    for given in paths:
        matches = sorted(glob.glob(given)) if glob.has_magic(given) else [given]
        if not matches:
            raise OutputLocationError(f"{given}: matches no folder")
        for match in matches:
            path = Path(match)
            if not path.exists():
                raise OutputLocationError(f"{path}: no such run folder")
            if (path / CARD).is_file():
                runs.append(path)
                continue
            inner = sorted(p.parent for p in path.glob(f"*/{CARD}"))
            if inner:
                runs += inner
            else:
                print(f"skipped {path}: not a run folder (no {CARD}) and holds none")
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    if not unique:
        raise OutputLocationError(f"no run folder (with {CARD}) among: {' '.join(paths)}")
    return unique


def _labels(runs: list[Path]) -> list[str]:
    # Folds of different cv folders share names (fold-0 ...): then the parent tells them apart.
    names = [p.name for p in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in runs]


def summarise(runs: list[Path]) -> list[RunSummary]:
    """One ``RunSummary`` per run folder, with labels unique within the list."""
    return [RunSummary.from_run_dir(p, label) for p, label in zip(runs, _labels(runs), strict=True)]


def setting_columns(summaries: list[RunSummary]) -> list[str]:
    """Settings worth a column: the fixed ones, then hyperparameters that differ between runs."""
    fixed = ["model", "seed", "window", "hop", "frontend", "batch_size"]
    keys = dict.fromkeys(k for s in summaries for k in s.settings if k not in fixed)
    differing = [
        k
        for k in keys
        if k in ALWAYS_SHOWN
        or len({json.dumps(s.settings.get(k), sort_keys=True) for s in summaries}) > 1
    ]
    return fixed + differing


def result_columns(summaries: list[RunSummary]) -> list[str]:
    """The result columns, without recording-level ones when no run has them."""
    has_recording = any(s.results.get(c) is not None for s in summaries for c in RECORDING_COLUMNS)
    return [c for c in RESULT_COLUMNS if has_recording or c not in RECORDING_COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        # Four decimals for metrics; significant digits for learning rates and the like.
        return f"{value:.4f}" if value == 0 or 0.01 <= abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _rows(summaries: list[RunSummary], columns: list[str], part: str) -> list[list[Any]]:
    return [[s.label, *(getattr(s, part).get(c) for c in columns)] for s in summaries]


def markdown_table(summaries: list[RunSummary]) -> str:
    """The comparison as Markdown: a settings table and a results table."""
    out = []
    for title, part, columns in (
        ("Settings", "settings", setting_columns(summaries)),
        ("Results", "results", result_columns(summaries)),
    ):
        out += [f"## {title}", "", "| run | " + " | ".join(columns) + " |"]
        out.append("|" + "---|" * (len(columns) + 1))
        for row in _rows(summaries, columns, part):
            out.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
        out.append("")
    return "\n".join(out)


def csv_table(summaries: list[RunSummary]) -> str:
    """The comparison as one CSV table: run, run folder, settings, results (full precision)."""
    settings, results = setting_columns(summaries), result_columns(summaries)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "run_dir", *settings, *results])
    for s in summaries:
        values = [s.settings.get(c) for c in settings] + [s.results.get(c) for c in results]
        writer.writerow(
            [s.label, s.run_dir]
            + [
                "" if v is None else json.dumps(v) if isinstance(v, list | dict) else v
                for v in values
            ]
        )
    return buf.getvalue()


def _figure(height_in: float) -> Any:
    from matplotlib.figure import Figure

    from damage_lightning.report.figures import DPI, FIG_WIDTH_IN

    return Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=DPI, layout="constrained")


def _save_png(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _legend(fig: Any, ax: Any, n: int) -> None:
    # Above the axes, so that no legend hides a curve or a bar (cv folders bring many runs).
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(n, 4), fontsize=7)


def validation_curves_figure(summaries: list[RunSummary], path: Path) -> Path | None:
    """Validation loss and accuracy per epoch, one line per run; ``None`` without histories."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    from damage_lightning.report.figures import plot_label

    if not any(s.val_curve for s in summaries):
        return None
    with matplotlib.rc_context({"font.size": 8, "axes.grid": True, "grid.alpha": 0.3}):
        fig = _figure(5.0)
        loss_ax, acc_ax = fig.subplots(2, 1, sharex=True)
        for s in summaries:
            for ax, i in ((loss_ax, 1), (acc_ax, 2)):
                pts = [(p[0], p[i]) for p in s.val_curve if p[i] is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", label=plot_label(s.label))
        loss_ax.set_ylabel("validation loss")
        acc_ax.set_ylabel("validation accuracy")
        acc_ax.set_xlabel("epoch")
        acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend(fig, loss_ax, len(summaries))
        return _save_png(fig, path)


def per_class_f1_figure(summaries: list[RunSummary], path: Path) -> Path | None:
    """Grouped bars of test F1 per class, one bar per run; ``None`` when no run has them."""
    import matplotlib

    from damage_lightning.report.figures import axis_labels, plot_label

    classes = list(dict.fromkeys(c for s in summaries for c in s.per_class_f1))
    if not classes:
        return None
    width = 0.8 / len(summaries)
    with matplotlib.rc_context({"font.size": 8, "axes.grid": True, "grid.alpha": 0.3}):
        fig = _figure(3.6)
        ax = fig.subplots()
        for i, s in enumerate(summaries):
            xs = [j + (i - (len(summaries) - 1) / 2) * width for j in range(len(classes))]
            ys = [s.per_class_f1.get(c) for c in classes]
            ax.bar(
                [x for x, y in zip(xs, ys, strict=True) if y is not None],
                [y for y in ys if y is not None],
                width=width,
                label=plot_label(s.label),
            )
        ax.set_xticks(range(len(classes)), axis_labels(classes, 24), rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("test F1 (window)")
        _legend(fig, ax, len(summaries))
        return _save_png(fig, path)


def write_pdf(summaries: list[RunSummary], figures: list[Path], path: Path) -> Path:
    """A short PDF: the runs, the two tables and the figures (landscape A4)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import cm
    from reportlab.platypus import Image, LongTable, Paragraph, SimpleDocTemplate, TableStyle

    from damage_lightning.report.layout import Styles, esc

    st = Styles()
    page_w = landscape(A4)[0] - 3 * cm
    story: list[Any] = [
        Paragraph("Run comparison", st.h1),
        Paragraph(esc(f"{len(summaries)} runs, {datetime.now():%Y-%m-%d %H:%M}"), st.note),
    ]
    story += [Paragraph(esc(f"{s.label}: {s.run_dir}"), st.small) for s in summaries]
    for title, part, columns in (
        ("Settings", "settings", setting_columns(summaries)),
        ("Results", "results", result_columns(summaries)),
    ):
        data = [[Paragraph(f"<b>{esc(c)}</b>", st.cell) for c in ["run", *columns]]]
        data += [
            [Paragraph(esc(_cell(v), 60), st.cell) for v in row]
            for row in _rows(summaries, columns, part)
        ]
        table = LongTable(data, colWidths=[page_w / len(data[0])] * len(data[0]), repeatRows=1)
        table.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.grey),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#DCE6F0")),
                ]
            )
        )
        story += [Paragraph(title, st.h2), table]
    for fig in figures:
        from reportlab.lib.utils import ImageReader

        w, h = ImageReader(str(fig)).getSize()
        height = min(14 * cm, page_w * h / w)
        story.append(Image(str(fig), width=height * w / h, height=height))
    buf = io.BytesIO()
    SimpleDocTemplate(
        buf,
        pagesize=landscape(A4),
        leftMargin=1.5 * cm,
        rightMargin=1.5 * cm,
        title="Run comparison",
    ).build(story)
    atomic_write_bytes(path, buf.getvalue())
    return path


@dataclass(frozen=True)
class ComparisonFiles:
    """The files ``compare`` wrote.

    Args:
        markdown: ``comparison.md``.
        csv: ``comparison.csv``.
        figures: the PNG figures (validation curves, per-class F1) that could be drawn.
        pdf: ``comparison.pdf`` when asked for.
    """

    markdown: Path
    csv: Path
    figures: list[Path]
    pdf: Path | None = None


def compare_runs(paths: list[str], out_dir: Path, *, pdf: bool = False) -> ComparisonFiles:
    """Write the comparison of the runs named by ``paths`` into ``out_dir``.

    Args:
        paths: run folders, folders of runs or glob patterns (see :func:`find_runs`).
        out_dir: folder for ``comparison.md``, ``comparison.csv``, the figures and the PDF.
        pdf: also write ``comparison.pdf``.
    """
    summaries = summarise(find_runs(paths))
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "comparison.md"
    atomic_write_text(md, "# Run comparison\n\n" + markdown_table(summaries))
    table = out_dir / "comparison.csv"
    atomic_write_text(table, csv_table(summaries))
    figures = [
        f
        for f in (
            validation_curves_figure(summaries, out_dir / CURVES_NAME),
            per_class_f1_figure(summaries, out_dir / F1_NAME),
        )
        if f is not None
    ]
    pdf_path = write_pdf(summaries, figures, out_dir / "comparison.pdf") if pdf else None
    return ComparisonFiles(md, table, figures, pdf_path)


def main_compare(argv: list[str]) -> int:
    """``python -m damage_lightning compare RUN [RUN ...] [--out DIR] [--pdf]``."""
    parser = argparse.ArgumentParser(
        prog="python -m damage_lightning compare",
        description="Compare runs: settings, test metrics, size and speed as Markdown and CSV, "
        "validation curves and per-class F1 as figures. A folder of run folders (cv, tune) "
        "stands for its runs.",
    )
    parser.add_argument("runs", nargs="+", help="run folders, folders of runs, or glob patterns")
    parser.add_argument("--out", default="comparison", help="output folder (default: comparison)")
    parser.add_argument("--pdf", action="store_true", help="also write comparison.pdf")
    ns = parser.parse_args(argv)
    files = compare_runs(ns.runs, Path(ns.out), pdf=ns.pdf)
    print(files.markdown.read_text(encoding="utf-8"))
    for path in (files.markdown, files.csv, *files.figures, files.pdf):
        if path is not None:
            print(f"wrote: {path}")
    return 0
