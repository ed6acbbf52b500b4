"""The report renders both detector types: a classifier's test results, a novelty detector's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from make_run import make_run
from pypdf import PdfReader

from damage_lightning.card import NoveltyCard
from damage_lightning.evaluation.detection import ScoredWindows, calibrate, evaluate
from damage_lightning.evaluation.scores_file import SCORES_FILE
from damage_lightning.report.build import generate_report

CLASSES = ["healthy", "crack", "loose_bolt"]


def _novelty_run(root: Path) -> Path:
    """A classifier-shaped run folder turned into a novelty detector's (card section, scores)."""
    run = make_run(root, name="novelty-run", classes=CLASSES, with_test=False)
    rng = np.random.default_rng(0)
    cal = ScoredWindows(
        rng.gamma(9, 10, 600), np.zeros(600, dtype=np.int64), np.repeat(np.arange(120), 5)
    )
    window, recording = calibrate(cal, 0.01, 0.01, 0.5)
    labels = np.repeat([0, 1, 2], [300, 60, 60])
    scores = np.concatenate([rng.gamma(9, 10, 300), rng.gamma(9, 30, 60), rng.gamma(9, 12, 60)])
    recs = np.repeat(np.arange(84), 5)
    test = evaluate(
        "detector", ScoredWindows(scores, labels, recs), window, recording, 0.5, CLASSES
    )
    card = NoveltyCard(
        healthy_label="healthy",
        detector="Mahalanobis distance on spectrum embeddings",
        decision_rule="a window alarms when ...",
        recording_quantile=0.5,
        calibration_unit="recording",
        calibration_recordings=120,
        calibration_windows=600,
        window_threshold=window,
        recording_threshold=recording,
        test=test,
        reference=test,
    )
    info = json.loads((run / "model_info.json").read_text())
    info["novelty"] = card.to_json()
    (run / "model_info.json").write_text(json.dumps(info))
    pd.DataFrame(
        {
            "recording": [f"{CLASSES[c]}/r{r}.csv" for c, r in zip(labels, recs, strict=True)],
            "label": [CLASSES[c] for c in labels],
            "start": np.tile(np.arange(5) * 512, 84),
            "score": scores,
            "alarm": scores > window.threshold,
        }
    ).to_csv(run / SCORES_FILE, index=False)
    return run


def _text(run: Path) -> str:
    pdf = PdfReader(run / "report" / "training_report.pdf")
    return "".join(page.extract_text() for page in pdf.pages)


def test_the_report_renders_both_detector_types(tmp_path: Path) -> None:
    classifier = make_run(tmp_path, name="classifier-run")
    novelty = _novelty_run(tmp_path)
    for run in (classifier, novelty):
        generate_report(run, llm=False)

    text = _text(classifier)
    assert "Per-class precision, recall and F1" in text and "test accuracy" in text
    assert "False alarms and detection" not in text

    text = _text(novelty)
    for phrase in (
        "False alarms and detection",
        "Threshold and calibration",
        "120 healthy",
        "false alarms, healthy test",
        "is a novelty detector trained on 'healthy'",
    ):
        assert phrase in text, phrase
    assert "Per-class precision, recall and F1" not in text
    figures = json.loads((novelty / "model_info.json").read_text())["report"]["figures"]
    assert "report/novelty_score_histograms.png" in figures
    assert "report/novelty_scores_over_time.png" in figures
