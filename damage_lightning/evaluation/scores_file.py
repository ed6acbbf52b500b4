"""A novelty detector's score tables: the test's ``novelty_scores.csv``, ``predict``'s CSVs.

``novelty_scores.csv`` has one row per test window (``recording``, ``label``, ``start``,
``score``, ``alarm`` and, when the reference ran, ``reference_score``); the report draws its score
histograms and scores over time from it, with the thresholds of the model card. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from damage_lightning.artifacts import atomic_write_bytes
from damage_lightning.deploy.novelty import RECORDING_COLUMNS, decide, recording_row, window_frame
from damage_lightning.deploy.predict import to_csv_bytes

SCORES_FILE = "novelty_scores.csv"
COLUMNS = ("recording", "label", "start", "score", "alarm", "reference_score")


def scores_frame(
    scores: dict[str, np.ndarray], recordings: list[str], class_names: list[str], threshold: float
) -> pd.DataFrame:
    """The table of test windows.

    Args:
        scores: ``recording`` and ``label`` (indices), ``start``, ``score`` and optionally
            ``reference_score`` per window (``NoveltyTask.test_scores``).
        recordings: recording names (paths) by index.
        class_names: label names by index.
        threshold: the window threshold (``alarm`` is ``score > threshold``).
    """
    frame = pd.DataFrame(
        {
            "recording": [recordings[int(r)] for r in scores["recording"]],
            "label": [class_names[int(i)] for i in scores["label"]],
            "start": np.asarray(scores["start"], dtype=np.int64),
            "score": np.asarray(scores["score"], dtype=np.float64),
        }
    )
    frame["alarm"] = frame["score"] > threshold
    if "reference_score" in scores:
        frame["reference_score"] = np.asarray(scores["reference_score"], dtype=np.float64)
    return frame


def write_scores(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write the table atomically as CSV (scores with 7 significant digits)."""
    text = frame.to_csv(index=False, float_format="%.7g", lineterminator="\n")
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_scores(path: str | os.PathLike) -> pd.DataFrame | None:
    """The table, or ``None`` when the file is missing or not such a table."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    if not {"recording", "label", "start", "score"} <= set(frame.columns):
        return None
    return frame


def write_novelty_predictions(
    outputs: list[dict], recordings: list[tuple[str, str | None]], model: Any, out_dir: Path
) -> list[Path]:
    """``predict`` of a novelty detector: ``predictions.csv`` and ``recording_predictions.csv``.

    The same tables and per-recording rule as the gateway (``deploy.novelty``).

    Args:
        outputs: ``NoveltyTask.predict_step`` results (``score``, ``alarm``, ``recording``,
            ``start`` tensors).
        recordings: ``(path, label or None)`` by recording index.
        model: the task (its ``novelty_rule()`` decides per recording).
        out_dir: folder for the two files.
    """
    rule = model.novelty_rule()

    def cat(key: str) -> np.ndarray:
        return np.concatenate([np.asarray(o[key].numpy()) for o in outputs])

    score, alarm, rec, start = (
        cat("score").astype(np.float64),
        cat("alarm"),
        cat("recording"),
        cat("start"),
    )
    windows = window_frame(
        [recordings[r][0] for r in rec], [recordings[r][1] or "" for r in rec], start, score, alarm
    )
    rows = [
        recording_row(
            recordings[r][0], recordings[r][1], decide(score[rec == r], alarm[rec == r], rule)
        )
        for r in sorted(set(rec.tolist()), key=lambda r: recordings[r][0])
    ]
    per_rec = pd.DataFrame(rows, columns=list(RECORDING_COLUMNS))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "predictions.csv", out_dir / "recording_predictions.csv"]
    atomic_write_bytes(paths[0], to_csv_bytes(windows))
    atomic_write_bytes(paths[1], to_csv_bytes(per_rec))
    return paths
