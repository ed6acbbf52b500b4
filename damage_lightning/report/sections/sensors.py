"""Report section on the sensor-health gate: what it found in the data and what it did."""

from __future__ import annotations

from typing import Any

from reportlab.lib.units import cm
from reportlab.platypus import CondPageBreak, Paragraph

from damage_lightning.card import SensorHealthCard
from damage_lightning.report.layout import Styles, esc, table
from damage_lightning.report.record import RunRecord
from damage_lightning.report.sections import heading

#: Findings listed in the report (model_info.json holds more).
MAX_FINDING_ROWS = 40
REASON_MAX = 400
SPLIT_NAMES = ("train", "val", "test")


def sensor_health(record: RunRecord, st: Styles) -> list[Any]:
    """Section 10: findings of the sensor-health gate (or that there were none), its action."""
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(heading("Sensor health"), st.h1)]
    health = record.card.sensor_health if record.card else None
    if health is None:
        story.append(
            Paragraph(
                "The sensor-health gate did not run for this model (data.health: off, or a run "
                "from before the gate).",
                st.note,
            )
        )
        return story
    story.append(Paragraph(esc(_summary(health)), st.body))
    if health.excluded_recordings:
        story.append(
            Paragraph(
                esc(
                    f"Excluded from training ({len(health.excluded_recordings)}): "
                    + ", ".join(health.excluded_recordings[:20])
                    + (" ..." if len(health.excluded_recordings) > 20 else ""),
                    600,
                ),
                st.body,
            )
        )
    if health.findings:
        story.append(Paragraph("Findings", st.h2))
        rows = [
            [
                f.file,
                f.channel,
                f"{f.start:,}-{f.stop:,}",
                f.kind.replace("_", " "),
                # The reason carries the numbers: longer than a plain cell may be.
                Paragraph(esc(f.reason, REASON_MAX), st.cell),
            ]
            for f in health.findings[:MAX_FINDING_ROWS]
        ]
        story.append(
            table(
                ["recording", "channel", "samples", "kind", "reason"],
                rows,
                [130, 50, 68, 50, 183],
                st,
            )
        )
        if health.findings_total > len(rows):
            story.append(
                Paragraph(
                    f"... and {health.findings_total - len(rows):,} more "
                    f"(model_info.json lists {len(health.findings):,}).",
                    st.note,
                )
            )
    if health.reference is not None:
        ref = health.reference
        story.append(Paragraph("RMS range of the training recordings", st.h2))
        rows = [
            [
                c,
                f"{10**m:.3g}",
                f"{10**lo:.3g} - {10**hi:.3g}",
                "yes" if dc else "no",
            ]
            for c, m, lo, hi, dc in zip(
                ref.channels,
                ref.log10_rms_median,
                ref.log10_rms_low,
                ref.log10_rms_high,
                ref.dc_coupled,
                strict=True,
            )
        ]
        story.append(
            table(
                ["channel", "median RMS", "accepted RMS", "DC-coupled"],
                rows,
                [140, 100, 160, 81],
                st,
                numeric_cols={1, 2},
            )
        )
        story.append(
            Paragraph(
                f"Fitted on {ref.recordings:,} recordings; the exported model carries this range, "
                "so predict and the gateway flag windows of recordings far outside it.",
                st.note,
            )
        )
    return story


def _summary(health: SensorHealthCard) -> str:
    n = health.recordings_checked
    if not health.findings_total:
        text = f"No sensor faults were found in the {n:,} recordings checked"
    else:
        text = (
            f"{health.findings_total:,} findings in {health.recordings_with_findings:,} of the "
            f"{n:,} recordings checked"
        )
    text += f" (action: {health.action})."
    flagged = health.flagged_windows
    if flagged and any(flagged.values()):
        what = "left out" if health.action == "exclude_windows" else "kept"
        counts = ", ".join(f"{s} {flagged.get(s, 0):,}" for s in SPLIT_NAMES)
        text += f" Windows overlapping a finding ({what}): {counts}."
    return text
