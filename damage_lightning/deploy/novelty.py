"""Novelty models on a gateway: the decision rule from the metadata, per-recording alarms.

An exported novelty detector maps waveform windows to ``score`` (higher: less like the healthy
training data) and ``alarm`` (score above the calibrated window threshold). A recording's score
is a quantile of its window scores (:func:`recording_score`), and the recording alarms when that
is above the recording threshold. Both thresholds, their false-alarm rates and calibration sizes
are in the model's metadata (:class:`NoveltyRule`). Torch-free: training, ``predict`` and the
gateway all use this rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from damage_lightning.deploy.metadata import ModelMetadata
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.windows import window_batches

if TYPE_CHECKING:
    from damage_lightning.deploy.predict import Predictions
    from damage_lightning.deploy.session import OnnxModel
    from damage_lightning.io.discovery import RecordingSpec

#: The metadata entry that names what a model does; novelty models carry ``novelty``.
TASK_KEY = "task"
NOVELTY = "novelty"
#: Columns of the per-recording and per-window tables of a novelty model.
RECORDING_COLUMNS = ("path", "label", "n_windows", "score", "alarm", "alarm_fraction")
WINDOW_COLUMNS = ("recording", "label", "start", "score", "alarm")


def recording_score(window_scores: np.ndarray, quantile: float) -> float:
    """A recording's score: the ``quantile`` of its window scores (linear interpolation).

    Args:
        window_scores: the scores of the recording's windows (at least one).
        quantile: in ``[0, 1]``; 0.5 is the median.
    """
    values = np.asarray(window_scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a recording score needs at least one window")
    return float(np.quantile(values, quantile))


@dataclass(frozen=True)
class NoveltyRule:
    """How a novelty model decides, as its metadata records it.

    Args:
        threshold: a window alarms when its score is above this.
        recording_threshold: a recording alarms when its score (:func:`recording_score`) is above
            this.
        recording_quantile: the quantile of the window scores that makes the recording score.
        false_alarm_rate: the window-level budget the threshold was calibrated for.
        recording_false_alarm_rate: the recording-level budget.
        healthy_label: the label of the data the detector was trained on.
        decision_rule: the rule in words.
        calibration: sizes and bounds of the calibration (``windows``, ``recordings``,
            ``unit``, ``window_bound``, ``recording_bound``).
    """

    threshold: float
    recording_threshold: float
    recording_quantile: float
    false_alarm_rate: float
    recording_false_alarm_rate: float
    healthy_label: str
    decision_rule: str
    calibration: dict[str, Any]

    def to_metadata(self) -> dict[str, Any]:
        """The metadata entries (``ModelMetadata.extra``) that carry the rule, ``task`` first."""
        return {
            TASK_KEY: NOVELTY,
            "threshold": self.threshold,
            "recording_threshold": self.recording_threshold,
            "recording_quantile": self.recording_quantile,
            "false_alarm_rate": self.false_alarm_rate,
            "recording_false_alarm_rate": self.recording_false_alarm_rate,
            "healthy_label": self.healthy_label,
            "decision_rule": self.decision_rule,
            "calibration": self.calibration,
        }

    @classmethod
    def from_metadata(cls, metadata: ModelMetadata, source: str = "") -> NoveltyRule:
        """Read the rule from a novelty model's metadata.

        Raises:
            DataValidationError: an entry is missing or malformed.
        """
        extra = metadata.extra
        try:
            return cls(
                threshold=float(json.loads(extra["threshold"])),
                recording_threshold=float(json.loads(extra["recording_threshold"])),
                recording_quantile=float(json.loads(extra["recording_quantile"])),
                false_alarm_rate=float(json.loads(extra["false_alarm_rate"])),
                recording_false_alarm_rate=float(json.loads(extra["recording_false_alarm_rate"])),
                healthy_label=extra["healthy_label"],
                decision_rule=extra["decision_rule"],
                calibration=dict(json.loads(extra["calibration"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataValidationError(
                Problem(source, "metadata", f"novelty model without a usable decision rule: {exc}")
            ) from exc


def is_novelty(metadata: ModelMetadata) -> bool:
    """Whether a model's metadata says it is a novelty detector."""
    return metadata.extra.get(TASK_KEY) == NOVELTY


@dataclass
class RecordingDecision:
    """A recording's novelty decision.

    Args:
        score: the recording score (:func:`recording_score` of its window scores).
        alarm: whether it is above the recording threshold.
        n_windows: windows scored.
        alarm_fraction: share of its windows that alarmed on their own.
    """

    score: float
    alarm: bool
    n_windows: int
    alarm_fraction: float


def decide(
    window_scores: np.ndarray, window_alarms: np.ndarray, rule: NoveltyRule
) -> RecordingDecision:
    """The recording decision from its windows' scores and alarms.

    Args:
        window_scores: the model's ``score`` of every window of the recording.
        window_alarms: the model's ``alarm`` of every window.
        rule: the model's decision rule.
    """
    score = recording_score(window_scores, rule.recording_quantile)
    alarms = np.asarray(window_alarms, dtype=bool)
    return RecordingDecision(
        score, bool(score > rule.recording_threshold), int(alarms.size), float(alarms.mean())
    )


def recording_row(path: str, label: str | None, decision: RecordingDecision) -> dict[str, Any]:
    """One row of the per-recording table (:data:`RECORDING_COLUMNS`)."""
    return {
        "path": path,
        "label": label or "",
        "n_windows": decision.n_windows,
        "score": decision.score,
        "alarm": decision.alarm,
        "alarm_fraction": decision.alarm_fraction,
    }


def window_frame(
    recording: Sequence[str],
    label: Sequence[str],
    start: np.ndarray,
    score: np.ndarray,
    alarm: np.ndarray,
) -> pd.DataFrame:
    """The per-window table (:data:`WINDOW_COLUMNS`)."""
    return pd.DataFrame(
        {
            "recording": list(recording),
            "label": list(label),
            "start": np.asarray(start, dtype=np.int64),
            "score": np.asarray(score, dtype=np.float64),
            "alarm": np.asarray(alarm, dtype=bool),
        },
        columns=list(WINDOW_COLUMNS),
    )


def predict_novelty(
    model: OnnxModel,
    loaded: list[tuple[RecordingSpec, np.ndarray]],
    hop: int,
    batch_size: int,
    keep_windows: bool,
) -> Predictions:
    """Score every recording with a novelty model, a batch of windows at a time.

    Args:
        model: the loaded novelty model.
        loaded: ``(spec, waveform)`` of every recording, read and validated.
        hop: step between windows.
        batch_size: windows per inference call.
        keep_windows: also return one row per window.
    """
    from damage_lightning.deploy.predict import Predictions

    rule = NoveltyRule.from_metadata(model.metadata, str(model.path))
    rows, frames = [], []
    for spec, waveform in loaded:
        starts, scores, alarms = [], [], []
        for batch_starts, windows in window_batches(
            waveform, model.metadata.window_length, hop, batch_size
        ):
            out = model.run(windows)
            starts.append(batch_starts)
            scores.append(out["score"].astype(np.float64))
            alarms.append(out["alarm"].astype(bool))
        score, alarm = np.concatenate(scores), np.concatenate(alarms)
        rows.append(recording_row(spec.relpath, spec.label, decide(score, alarm, rule)))
        if keep_windows:
            n = len(score)
            label = spec.label or ""
            frames.append(
                window_frame([spec.relpath] * n, [label] * n, np.concatenate(starts), score, alarm)
            )
    windows = pd.concat(frames, ignore_index=True) if keep_windows and frames else None
    return Predictions(pd.DataFrame(rows, columns=list(RECORDING_COLUMNS)), windows)
