"""Report sections on what went into training: model and data, the split, the hyperparameters."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from reportlab.lib.units import cm
from reportlab.platypus import CondPageBreak, Paragraph

from damage_lightning.card import DataSummary, InputSpec, ModelSummary, SplitSummary
from damage_lightning.data.splits import SplitPlan
from damage_lightning.report.facts import class_names
from damage_lightning.report.layout import (
    FRAME_W,
    MAX_WARNINGS,
    NAME_MAX,
    Styles,
    esc,
    flatten,
    kv_table,
    table,
    value_text,
)
from damage_lightning.report.record import RunRecord
from damage_lightning.report.sections import HEADINGS
from damage_lightning.report.text import as_number, clean_text, format_number

SPLIT_NAMES = ("train", "val", "test")


def model_and_data(record: RunRecord, st: Styles) -> list[Any]:
    """Section 2: architecture, input, classes, recordings and windows, data warnings."""
    card = record.card
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(HEADINGS[4], st.h1)]
    story.append(Paragraph("Architecture", st.h2))
    if card:
        story += _model(card.model, st)
    else:
        story.append(Paragraph("model_info.json has no model section.", st.note))
    story.append(Paragraph("Input", st.h2))
    if card:
        story.append(kv_table(_input_rows(card.input), st))
    else:
        story.append(Paragraph("model_info.json has no input specification.", st.note))
    classes = class_names(card)
    story.append(Paragraph(f"Classes ({len(classes)})", st.h2))
    story.append(Paragraph(", ".join(esc(c, NAME_MAX) for c in classes) or "not recorded", st.body))
    story.append(Paragraph("Recordings and windows per class and split", st.h2))
    if card and card.data.per_class:
        story += _per_class(card.data, st)
    else:
        story.append(Paragraph("model_info.json has no per-class data summary.", st.note))
    warnings_ = card.data.warnings if card else []
    if warnings_:
        story.append(Paragraph(f"Data warnings ({len(warnings_)})", st.h2))
        for w in warnings_[:MAX_WARNINGS]:
            story.append(Paragraph(esc(w, 300), st.bullet, bulletText="•"))
        if len(warnings_) > MAX_WARNINGS:
            story.append(Paragraph(f"... and {len(warnings_) - MAX_WARNINGS} more.", st.note))
    return story


def _model(model: ModelSummary, st: Styles) -> list[Any]:
    rows = [("class", value_text(model.class_path or model.name))]
    rows += [
        ("parameters", f"{model.parameters:,}"),
        ("trainable parameters", f"{model.trainable_parameters:,}"),
    ]
    story: list[Any] = [kv_table(rows, st)]
    # Lightning adds private keys (_class_path, _instantiator) that say nothing new.
    hparams = {k: v for k, v in model.hyperparameters.items() if not k.startswith("_")}
    if model.hyperparameters:
        story.append(Paragraph("Hyperparameters saved with the model", st.h2))
        story.append(kv_table(flatten(hparams), st))
    return story


def _input_rows(inp: InputSpec) -> list[tuple[str, Any]]:
    channels = inp.channels
    rows: list[tuple[str, Any]] = [
        (f"channels ({len(channels)})", ", ".join(clean_text(c) for c in channels))
    ]
    sr = as_number(inp.sample_rate)
    if sr is not None:
        rows.append(("sample rate", f"{format_number(sr, 6)} Hz"))
    win = inp.window_length
    rows.append(("window length", f"{win:,} samples" + (f" ({win / sr:.3g} s)" if sr else "")))
    rows.append(("hop", f"{inp.hop:,} samples"))
    rows += flatten(inp.frontend, "front end")
    shown = ("channels", "sample_rate", "window_length", "hop", "frontend")
    rows += flatten({k: v for k, v in inp.to_json().items() if k not in shown})
    return rows


def _per_class(data: DataSummary, st: Styles) -> list[Any]:
    header = ["class"] + [f"{s} {what}" for s in SPLIT_NAMES for what in ("rec.", "windows")]
    rows = []
    totals = [0] * 6
    for name, by_split in data.per_class.items():
        row: list[Any] = [clean_text(name, max_len=NAME_MAX)]
        i = 0
        for s in SPLIT_NAMES:
            counts = by_split.get(s)
            for v in (counts.recordings, counts.windows) if counts else (None, None):
                totals[i] += v or 0
                row.append("–" if v is None else f"{v:,}")
                i += 1
        rows.append(row)
    rows.append(["total"] + [f"{t:,}" for t in totals])
    story: list[Any] = [
        table(
            header,
            rows,
            [130] + [58.6] * 6,
            st,
            numeric_cols=set(range(1, 7)),
            bold_rows={len(rows) - 1},
        )
    ]
    if data.data_dir:
        story.append(Paragraph(f"Data folder: {esc(data.data_dir, 200)}", st.note))
    return story


def check_segments(plan: SplitPlan | None) -> dict[str, Any] | None:
    """Re-check splits.json: overlapping ranges of different splits and the smallest gap."""
    if plan is None:
        return None
    by_recording: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for s in plan.segments:
        by_recording[s.recording].append((s.split, s.start, s.stop))
    overlaps = 0
    shared = 0
    min_gap: float | None = None
    for segs in by_recording.values():
        if len({sp for sp, _, _ in segs}) > 1:
            shared += 1
        for i, (sa, a0, a1) in enumerate(segs):
            for sb, b0, b1 in segs[i + 1 :]:
                if sa == sb:
                    continue
                if a0 < b1 and b0 < a1:
                    overlaps += 1
                else:
                    gap = b0 - a1 if b0 >= a1 else a0 - b1
                    min_gap = gap if min_gap is None else min(min_gap, gap)
    return {
        "recordings": len(by_recording),
        "block_split": shared,
        "overlaps": overlaps,
        "min_gap": min_gap,
    }


def splits(record: RunRecord, st: Styles) -> list[Any]:
    """Section 3: strategy and settings, counts per split, the leakage check and its re-check."""
    si = record.card.splits if record.card else None
    plan = record.splits
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(HEADINGS[5], st.h1)]
    if si is None and plan is None:
        return [
            *story,
            Paragraph("Neither model_info.json nor splits.json describes the split.", st.note),
        ]
    strategy = (si.strategy if si else None) or (plan.strategy if plan else None)
    rows = [("strategy", clean_text(strategy or "not recorded"))]
    gap = si.gap_samples if si else plan.gap if plan else None
    if gap is not None:
        rows.append(("gap between splits", f"{value_text(gap)} samples"))
    if plan:
        rows += [(key, value_text(getattr(plan, key))) for key in ("seed", "window", "hop")]
        rows.append(
            ("fractions", ", ".join(f"{k} {value_text(v)}" for k, v in plan.fractions.items()))
        )
    story.append(kv_table(rows, st, 0.3))
    if si and si.summary:
        story += _per_split(si, st)
    story.append(Paragraph("Leakage check", st.h2))
    if si:
        story += _leakage(si, st)
    else:
        story.append(Paragraph("model_info.json records no leakage check.", st.note))
    seg = check_segments(plan)
    if seg is not None:
        text = (
            f"Re-checked from splits.json: {seg['recordings']:,} recordings, "
            f"{seg['block_split']:,} of them cut into blocks in more than one split, "
            f"{seg['overlaps']} overlapping sample ranges between splits"
        )
        if seg["min_gap"] is not None:
            text += (
                f", smallest gap between blocks of different splits {int(seg['min_gap']):,} samples"
            )
        story.append(Paragraph(esc(text + "."), st.body))
    else:
        story.append(Paragraph("splits.json is not available; no re-check.", st.note))
    return story


def _per_split(si: SplitSummary, st: Styles) -> list[Any]:
    summary = {split: totals.to_json() for split, totals in si.summary.items()}
    keys: list[str] = []
    for by in summary.values():
        keys += [k for k in by if k not in keys]
    rows = [
        [clean_text(split, max_len=30)]
        + [value_text(by[k]) if by.get(k) is not None else "–" for k in keys]
        for split, by in summary.items()
    ]
    width = (FRAME_W - 90) / max(len(keys), 1)
    return [
        Paragraph("Per split", st.h2),
        table(
            ["split", *keys],
            rows,
            [90] + [width] * len(keys),
            st,
            numeric_cols=set(range(1, len(keys) + 1)),
        ),
    ]


def _leakage(si: SplitSummary, st: Styles) -> list[Any]:
    leak = si.leakage_check
    n = esc(value_text(leak.overlapping_ranges))
    if leak.passed:
        text = (
            "<b>Passed</b>: no recording or sample range is in two splits "
            f"({n} overlapping ranges)."
        )
    else:
        text = (
            f"<font color='#B00020'><b>FAILED</b></font>: {n} overlapping ranges between splits; "
            "the validation and test metrics are optimistic."
        )
    story: list[Any] = [Paragraph(text, st.body)]
    extra = {k: v for k, v in leak.to_json().items() if k not in ("passed", "overlapping_ranges")}
    if extra:
        story.append(kv_table(flatten(extra), st, 0.3))
    return story


def hyperparameters(record: RunRecord, st: Styles) -> list[Any]:
    """Section 4: the resolved config.yaml by part (model, data, optimiser, trainer, callbacks)."""
    config = record.config
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(HEADINGS[6], st.h1)]
    if not config:
        story.append(
            Paragraph(
                "config.yaml is not available; the model's hyperparameters from "
                "model_info.json are shown instead.",
                st.note,
            )
        )
        saved = record.card.model.hyperparameters if record.card else {}
        story.append(kv_table(flatten(saved), st))
        return story
    seed = config.get("seed_everything")
    story.append(
        Paragraph(
            f"From config.yaml (the resolved configuration); seed_everything = "
            f"{esc(value_text(seed))}.",
            st.note,
        )
    )
    # config.yaml is LightningCLI's free-form YAML, not one of our records: its shape is checked
    # here, where it is read.
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    parts = [
        ("Model", config.get("model"), False),
        ("Data", config.get("data"), False),
        ("Optimiser", config.get("optimizer"), False),
        ("Learning-rate scheduler", config.get("lr_scheduler"), False),
        (
            "Trainer",
            {k: v for k, v in trainer.items() if k not in ("callbacks", "logger", "plugins")},
            True,
        ),
    ]
    for title, section, skip_none in parts:
        story.append(Paragraph(title, st.h2))
        if section in (None, {}, []):
            chosen_by_model = title in ("Optimiser", "Learning-rate scheduler")
            story.append(
                Paragraph(
                    "Not set in config.yaml ("
                    + ("the model chooses it" if chosen_by_model else "defaults apply")
                    + ").",
                    st.note,
                )
            )
            continue
        story.append(kv_table(flatten(section, skip_none=skip_none), st))
        if skip_none:
            omitted = sum(1 for v in section.values() if v is None)
            if omitted:
                story.append(
                    Paragraph(
                        f"{omitted} trainer options left unset (null) are not listed.", st.note
                    )
                )
    story += _callbacks(trainer.get("callbacks"), st)
    others = {
        k: v
        for k, v in config.items()
        if k not in ("model", "data", "optimizer", "lr_scheduler", "trainer", "seed_everything")
    }
    if others:
        story.append(Paragraph("Other settings", st.h2))
        story.append(kv_table(flatten(others, skip_none=True), st))
    return story


def _callbacks(callbacks: Any, st: Styles) -> list[Any]:
    story: list[Any] = [Paragraph("Callbacks", st.h2)]
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    if not isinstance(callbacks, list) or not callbacks:
        return [*story, Paragraph("No callbacks in config.yaml.", st.note)]
    rows = []
    for cb in callbacks:
        if isinstance(cb, dict):
            name = str(cb.get("class_path", "callback")).rsplit(".", 1)[-1]
            args = cb.get("init_args") or {}
            settings = (
                ", ".join(f"{k}={value_text(v)}" for k, v in args.items())
                if isinstance(args, dict)
                else value_text(args)
            )
        else:
            name, settings = str(cb).rsplit(".", 1)[-1], ""
        rows.append([clean_text(name, max_len=60), settings or "defaults"])
    return [*story, table(["callback", "settings"], rows, [150, FRAME_W - 150], st)]
