"""Report sections on what training produced: curves, test results, history, log, exports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from reportlab.lib.units import cm
from reportlab.platypus import CondPageBreak, PageBreak, Paragraph

from damage_lightning.artifacts import sha256_file
from damage_lightning.card import ExportEntry
from damage_lightning.report.analysis import Analysis
from damage_lightning.report.facts import WEAK_RECALL, per_class_metrics
from damage_lightning.report.figures import FigureFile
from damage_lightning.report.layout import (
    BEST_BG,
    FRAME_W,
    HISTORY_ROWS,
    NAME_MAX,
    WARN_BG,
    Styles,
    esc,
    figure_flowables,
    flatten,
    kv_table,
    log_table,
    sample_indices,
    table,
    value_text,
)
from damage_lightning.report.record import RunRecord
from damage_lightning.report.sections import HEADINGS
from damage_lightning.report.text import as_number, clean_text, format_number, format_percent

HISTORY_COLS = (
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("train_acc", "train acc"),
    ("val_acc", "val acc"),
    ("val_f1", "val F1"),
    ("lr", "LR"),
    ("epoch_time_s", "time (s)"),
)


def _fixed(value: Any) -> str:
    v = as_number(value)
    return "n/a" if v is None else f"{v:.3f}"


def curves(figures: list[FigureFile], st: Styles) -> list[Any]:
    """Section 5: the training-curve figure."""
    found = [f for f in figures if f.kind == "curves"]
    # A figure fills a page; a note alone does not deserve one.
    story: list[Any] = [
        PageBreak() if found else CondPageBreak(4 * cm),
        Paragraph(HEADINGS[7], st.h1),
    ]
    if not found:
        return [
            *story,
            Paragraph("training_history.json has no per-epoch values: no curves.", st.note),
        ]
    for fig in found:
        story += figure_flowables(fig, st)
    return story


def evaluation(record: RunRecord, figures: list[FigureFile], st: Styles) -> list[Any]:
    """Section 6: test metrics, the confusion matrices, per-class precision/recall/F1."""
    test = record.card.test_metrics if record.card else None
    cms = [f for f in figures if f.kind.startswith("confusion")]
    story: list[Any] = [
        PageBreak() if cms else CondPageBreak(6 * cm),
        Paragraph(HEADINGS[8], st.h1),
    ]
    if test is None:
        return [
            *story,
            Paragraph(
                "No test metrics in model_info.json: the run was not tested, "
                "so there is no confusion matrix or per-class table.",
                st.note,
            ),
        ]
    labels = {"accuracy": "accuracy", "f1_macro": "macro F1", "loss": "loss"}
    rows = [
        (
            labels.get(k, k.replace("_", " ")),
            format_percent(v) if k == "accuracy" else format_number(v),
        )
        for k, v in test.to_json().items()
        if as_number(v) is not None
    ]
    story.append(kv_table(rows, st, 0.3))
    if not cms:
        story.append(Paragraph("No usable confusion matrix in model_info.json.", st.note))
    for fig in cms:
        story += figure_flowables(fig, st)
    story.append(CondPageBreak(5 * cm))
    story.append(Paragraph("Per-class precision, recall and F1", st.h2))
    per_class = per_class_metrics(record.card)
    if per_class:
        story += _per_class_table(per_class, st)
    else:
        story.append(Paragraph("No per-class metrics in model_info.json.", st.note))
    return story


def _per_class_table(per_class: dict[str, dict[str, float | None]], st: Styles) -> list[Any]:
    rows = []
    weak = {}
    for i, (name, m) in enumerate(per_class.items()):
        support = m["support"]
        rows.append(
            [
                clean_text(name, max_len=NAME_MAX),
                _fixed(m["precision"]),
                _fixed(m["recall"]),
                _fixed(m["f1"]),
                "–" if support is None else f"{int(support):,}",
            ]
        )
        recall = m["recall"]
        if recall is not None and recall < WEAK_RECALL:
            weak[i] = WARN_BG
    metrics = ("precision", "recall", "f1")
    vals = {k: [m[k] for m in per_class.values()] for k in metrics}
    macro = [
        sum(v for v in vals[k] if v is not None) / max(1, sum(v is not None for v in vals[k]))
        for k in metrics
    ]
    rows.append(["macro average", *(_fixed(v) for v in macro), ""])
    story: list[Any] = [
        table(
            ["class", "precision", "recall", "F1", "support"],
            rows,
            [FRAME_W - 4 * 75, 75, 75, 75, 75],
            st,
            numeric_cols={1, 2, 3, 4},
            row_backgrounds=weak,
            bold_rows={len(rows) - 1},
        )
    ]
    if weak:
        story.append(Paragraph(f"Shaded rows: recall below {WEAK_RECALL}.", st.note))
    return story


def history(record: RunRecord, analysis: Analysis, st: Styles) -> list[Any]:
    """Section 7: a sampled per-epoch table with the best, LR-reduction and early-stop epochs."""
    epochs = record.history.epochs
    story: list[Any] = [CondPageBreak(8 * cm), Paragraph(HEADINGS[10], st.h1)]
    if not epochs:
        return [*story, Paragraph("training_history.json has no epochs.", st.note)]
    cols = [
        (k, lbl)
        for k, lbl in HISTORY_COLS
        if any(as_number(getattr(e, k)) is not None for e in epochs)
    ]
    facts = analysis.facts
    best = facts.get("best_epoch")
    reductions = {r["epoch"] for r in facts.get("lr_reductions") or []}
    stop = facts.get("last_epoch") if facts.get("stopped_early") else None
    keep = [i for i, e in enumerate(epochs) if e.epoch == best or e.epoch in reductions]
    rows, bg = [], {}
    for r, i in enumerate(sample_indices(len(epochs), keep=tuple(keep))):
        e = epochs[i]
        notes = []
        if e.epoch == best:
            notes.append("best")
            bg[r] = BEST_BG
        if e.epoch in reductions:
            notes.append("LR reduced")
        if e.epoch == stop:
            notes.append("early stop")
        row = [str(e.epoch)]
        for k, _ in cols:
            v = as_number(getattr(e, k))
            if v is None:
                row.append("–")
            elif k == "epoch_time_s":
                row.append(f"{v:.1f}")
            elif k == "lr":
                row.append(format_number(v, 3))
            else:
                row.append(f"{v:.4f}")
        rows.append([*row, ", ".join(notes)])
    step = 1 if len(epochs) <= HISTORY_ROWS else math.ceil(len(epochs) / (HISTORY_ROWS - 1))
    shown = (
        "all epochs shown"
        if step == 1
        else (
            f"every {step} epochs shown, plus the first, last, best and learning-rate-reduction "
            "epochs"
        )
    )
    story.append(
        Paragraph(
            f"{len(epochs)} epochs; {shown}. Highlighted: the best epoch by validation loss.",
            st.note,
        )
    )
    widths = [38] + [52] * len(cols) + [FRAME_W - 38 - 52 * len(cols)]
    story.append(
        table(
            ["epoch", *(lbl for _, lbl in cols), "note"],
            rows,
            widths,
            st,
            numeric_cols=set(range(len(cols) + 1)),
            row_backgrounds=bg,
        )
    )
    return story


def log(record: RunRecord, st: Styles) -> list[Any]:
    """Section 8: the tail of training_log.txt."""
    lines = record.log_lines
    total = record.log_total_lines
    story: list[Any] = [CondPageBreak(8 * cm), Paragraph(HEADINGS[11], st.h1)]
    if total is None:
        return [*story, Paragraph("training_log.txt is not available.", st.note)]
    if not lines:
        return [*story, Paragraph("training_log.txt is empty.", st.note)]
    story.append(
        Paragraph(
            f"The last {len(lines)} of {total:,} lines of training_log.txt "
            "(progress-bar updates collapsed; long lines wrapped).",
            st.note,
        )
    )
    story.append(log_table(lines, st))
    return story


def reproducibility(record: RunRecord, st: Styles) -> list[Any]:
    """Section 9: seed, checksums of config and splits, versions, exported files."""
    card = record.card
    run_dir = record.run_dir or Path(".")
    story: list[Any] = [CondPageBreak(8 * cm), Paragraph(HEADINGS[12], st.h1)]
    seed = card.seed if card and card.seed is not None else record.config.get("seed_everything")
    rows: list[tuple[str, Any]] = [
        ("seed", value_text(seed) if seed is not None else "not recorded")
    ]
    if (run_dir / "config.yaml").is_file():
        rows.append(("re-run", "python -m damage_lightning fit --config config.yaml"))
    for name in ("config.yaml", "splits.json"):
        if (run_dir / name).is_file():
            digest = Paragraph(esc(sha256_file(run_dir / name)), st.cell_mono)
            rows.append((f"{name} sha256", digest))
    if card and card.best_checkpoint:
        rows.append(("best checkpoint", value_text(card.best_checkpoint)))
    story.append(kv_table(rows, st, 0.3))
    story.append(Paragraph("Versions", st.h2))
    story.append(
        kv_table(flatten(card.versions), st, 0.3)
        if card and card.versions
        else Paragraph("model_info.json records no versions.", st.note)
    )
    story.append(Paragraph("Exports", st.h2))
    if not card or not card.exports:
        story.append(
            Paragraph("No exports recorded in model_info.json (the run was not exported).", st.note)
        )
        return story
    for fmt, exp in card.exports.items():
        story.append(Paragraph(esc(fmt, 40), st.h2))
        story.append(kv_table(_export_rows(exp, st), st, 0.3))
    return story


def _export_rows(exp: ExportEntry, st: Styles) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("file", value_text(exp.path) + f" ({exp.size_bytes / 1e6:.2f} MB)"),
        ("sha256", Paragraph(esc(exp.sha256, 80), st.cell_mono)),
    ]
    ver = exp.verification
    if ver and ver.agreement is not None:
        # A quantised model is judged by its decisions against the float model, not by the
        # size of its probability differences (int8 rounding moves them by a few hundredths).
        text = "passed" if ver.passed else "FAILED"
        text += (
            f": top class equal to the {value_text(ver.reference or 'float model')}'s on "
            f"{format_percent(ver.agreement)} of {value_text(ver.test_windows)} "
            f"{value_text(ver.test_split or 'test')} windows"
        )
        if as_number(ver.accuracy) is not None and as_number(ver.accuracy_reference) is not None:
            text += (
                f"; accuracy {format_number(ver.accuracy, 4)} against "
                f"{format_number(ver.accuracy_reference, 4)}"
            )
        rows.append(("verification", text))
    elif ver:
        text = "passed" if ver.passed else "FAILED"
        if as_number(ver.max_abs_diff) is not None:
            text += f", max |difference| {format_number(ver.max_abs_diff, 3)}"
        text += " at batch sizes " + ", ".join(value_text(b) for b in ver.batch_sizes)
        if ver.runtime:
            text += f" ({value_text(ver.runtime)})"
        rows.append(("verification", text))
    if as_number(exp.export_time_s) is not None:
        rows.append(("export time", f"{exp.export_time_s:.1f} s"))
    shown = ("path", "size_bytes", "sha256", "verification", "export_time_s")
    rows += flatten({k: v for k, v in exp.to_json().items() if k not in shown})
    return rows
