"""The sensor-health gate of training: check the loaded recordings, then warn or exclude.

``DamageDataModule(health=...)`` calls :func:`apply_gate` on the loaded data before the split and
:func:`flag_split_windows` on each split's windows; the checks and the window rule are
``damage_lightning.evaluation.health``'s, the same that ``predict`` and the gateway apply.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from damage_lightning.card import SensorFinding, SensorHealthCard, SensorReference
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.evaluation.health import (
    DEFAULT_OPTIONS,
    HealthOptions,
    check_recording,
    finding_line,
    fit_reference,
    index_health,
)
from damage_lightning.io.dataset import LoadedDataset

HealthAction = Literal["warn", "exclude_recording", "exclude_windows", "off"]
ACTIONS: tuple[str, ...] = ("warn", "exclude_recording", "exclude_windows", "off")
#: At most this many findings are kept in the model card (all of them are printed and acted on).
MAX_CARD_FINDINGS = 1000


@dataclass
class GateResult:
    """What the gate did to the loaded data.

    Args:
        dataset: the data to split: the loaded data without the excluded recordings.
        findings: the findings of each recording of ``dataset``, by index.
        reference: the RMS reference fitted on the loaded recordings.
        card: the model card's record (``flagged_windows`` is filled per split later).
    """

    dataset: LoadedDataset
    findings: list[list[SensorFinding]]
    reference: SensorReference | None
    card: SensorHealthCard | None
    excluded: list[str] = field(default_factory=list)


def apply_gate(
    ds: LoadedDataset,
    action: HealthAction,
    where: str,
    options: HealthOptions = DEFAULT_OPTIONS,
    echo: bool = True,
) -> GateResult:
    """Check every loaded recording and channel; print the findings; drop recordings if asked.

    The RMS reference is fitted on all loaded recordings before the split (robust statistics, so
    the faulty recordings among them do not move it), and the same data give the same reference
    whichever stage loads them.

    Args:
        ds: the loaded data.
        action: ``warn`` keeps everything; ``exclude_recording`` drops each recording with a
            finding; ``exclude_windows`` keeps the recordings (windows are dropped per split with
            :func:`flag_split_windows`); ``off`` checks nothing.
        where: the data folder, for errors.
        options: the thresholds.
        echo: print each finding on stderr.

    Raises:
        DataValidationError: ``exclude_recording`` leaves a class without recordings.
    """
    if action not in ACTIONS:
        raise ValueError(f"data.health must be one of {', '.join(ACTIONS)}, got {action!r}")
    if action == "off":
        return GateResult(ds, [[] for _ in ds.recordings], None, None)
    reference = fit_reference(ds.waveforms, ds.channels, options)
    findings = [
        check_recording(w, ds.channels, r.relpath, ds.sample_rate, reference, options)
        for r, w in zip(ds.recordings, ds.waveforms, strict=True)
    ]
    flat = [f for fs in findings for f in fs]
    if echo:
        for f in flat:
            print(f"sensor health: {finding_line(f)}", file=sys.stderr)
    bad = [i for i, fs in enumerate(findings) if fs]
    card = SensorHealthCard(
        action=action,
        recordings_checked=len(ds.recordings),
        recordings_with_findings=len(bad),
        findings=flat[:MAX_CARD_FINDINGS],
        findings_total=len(flat),
        reference=reference,
        options=options.to_json(),
    )
    if action != "exclude_recording" or not bad:
        return GateResult(ds, findings, reference, card)
    keep = [i for i in range(len(ds.recordings)) if i not in set(bad)]
    excluded = [ds.recordings[i].relpath for i in bad]
    lost = sorted(set(ds.labels) - {ds.labels[i] for i in keep})
    if lost:
        raise DataValidationError(
            [
                Problem(
                    where,
                    "data.health",
                    f"exclude_recording leaves class {c!r} without recordings (excluded: "
                    f"{', '.join(ds.recordings[i].relpath for i in bad if ds.labels[i] == c)}); "
                    "fix the sensors, or use data.health=exclude_windows or warn",
                )
                for c in lost
            ]
        )
    if echo:
        print(
            f"sensor health: excluded {len(excluded)} of {len(ds.recordings)} recordings "
            "(data.health=exclude_recording)",
            file=sys.stderr,
        )
    card.excluded_recordings = excluded
    kept = LoadedDataset(
        recordings=[ds.recordings[i] for i in keep],
        waveforms=[ds.waveforms[i] for i in keep],
        channels=ds.channels,
        sample_rate=ds.sample_rate,
        warnings=ds.warnings,
    )
    return GateResult(kept, [findings[i] for i in keep], reference, card, excluded)


def flag_split_windows(
    index: np.ndarray,
    findings: list[list[SensorFinding]],
    window: int,
    drop: bool,
) -> tuple[np.ndarray, int]:
    """The windows ``(recording, start)`` of one split, less those overlapping a finding if asked.

    Args:
        index: ``(n, 2)`` window index of the split.
        findings: the findings of each recording.
        window: window length in samples.
        drop: leave out the windows that overlap a finding (``exclude_windows``).

    Returns:
        ``(index, n_flagged)``: the index (without the flagged windows when ``drop``) and how
        many windows overlap a finding.
    """
    if len(index) == 0 or not any(findings):
        return index, 0
    health = index_health(index[:, 0], index[:, 1], findings, window)
    return (index[health.ok] if drop else index), health.n_flagged


def rethrow_with_exclusions(exc: DataValidationError, excluded: list[str], where: str) -> None:
    """Re-raise a split error, adding that the gate excluded recordings when it did.

    Raises:
        DataValidationError: always.
    """
    if not excluded:
        raise exc
    note = Problem(
        where,
        "data.health",
        f"exclude_recording left out {len(excluded)} recordings with sensor findings "
        f"({', '.join(excluded[:5])}{', ...' if len(excluded) > 5 else ''}) before this split",
    )
    raise DataValidationError([*exc.problems, note]) from None
