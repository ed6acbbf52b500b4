"""``cv``: one real tiny fit per fold, results with mean and sd, the baseline, and resuming."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_model, tiny_overrides

from damage_lightning.cli import main
from damage_lightning.cv import FOLD_RESULT, parse_cv_args
from damage_lightning.errors import DataValidationError, OutputLocationError
from damage_lightning.evaluation.baseline import log_welch_psd, score_baseline
from damage_lightning.runner import run_cv

CNN = str(REPO / "configs" / "cnn.yaml")
RIGS = ("r0", "r1", "r2", "r3")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rig_data(tiny_data, tmp_path_factory):
    """The tiny frame data with a ``rig`` column: each class has one recording per rig."""
    out = tmp_path_factory.mktemp("rigs")
    manifest = pd.read_csv(tiny_data / "manifest.csv")
    manifest["rig"] = [RIGS[i % 4] for i in range(len(manifest))]
    path = out / "rigs.csv"
    manifest.to_csv(path, index=False)
    return tiny_data, path, manifest


def _args(data_dir, manifest, root, cache_dir, *extra):
    return [
        "--config",
        CNN,
        *tiny_overrides(data_dir, root, cache_dir, epochs=2),
        *tiny_model(CNN),
        "--data.manifest",
        str(manifest),
        "--report.enabled",
        "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def cv_run(rig_data, cache_dir, tmp_path_factory):
    data_dir, manifest, _ = rig_data
    root = tmp_path_factory.mktemp("cv") / "models"
    main(["cv", *_args(data_dir, manifest, root, cache_dir), "--cv.by", "rig"])
    return root / "cv-rig", (data_dir, manifest, root)


def test_every_rig_is_tested_once_and_never_trained_on(cv_run, rig_data):
    cv_dir, _ = cv_run
    _, _, manifest = rig_data
    rig_of = dict(zip(manifest["path"], manifest["rig"], strict=True))
    tested = []
    for rig in RIGS:
        splits = json.loads((cv_dir / "folds" / f"rig={rig}" / "splits.json").read_text())
        for rec in splits["recordings"]:
            sides = {s["split"] for s in rec["segments"]}
            if rig_of[rec["path"]] == rig:
                assert sides == {"test"}
                tested.append(rec["path"])
            else:
                assert "test" not in sides
    assert sorted(tested) == sorted(manifest["path"])


def test_results_hold_every_fold_mean_sd_baseline_and_chance(cv_run):
    cv_dir, _ = cv_run
    table = pd.read_csv(cv_dir / "cv_results.csv")
    assert list(table["fold"]) == [f"rig={r}" for r in RIGS] + ["mean", "sd"]
    folds = table.iloc[:4]
    mean = table.set_index("fold").loc["mean"]
    sd = table.set_index("fold").loc["sd"]
    for col in ("window_accuracy", "recording_accuracy", "baseline_window_accuracy"):
        assert folds[col].between(0, 1).all()
        assert mean[col] == pytest.approx(folds[col].mean(), abs=1e-4)
        assert sd[col] == pytest.approx(folds[col].std(ddof=1), abs=1e-4)
    # Five balanced classes: one recording of each per rig.
    assert (folds["chance_majority"] == 0.2).all()
    assert (folds["n_test"] == 5).all() and (folds["n_val"] == 5).all()
    document = json.loads((cv_dir / "cv_results.json").read_text())
    assert document["complete"] and document["n_folds"] == 4 and document["by"] == "rig"
    assert document["baseline"].startswith("log-Welch PSD")
    for fold, row in zip(document["folds"], folds.itertuples(), strict=True):
        info = json.loads((cv_dir / fold["run_dir"] / "model_info.json").read_text())
        assert fold["window_accuracy"] == pytest.approx(info["test_metrics"]["accuracy"])
        assert row.window_accuracy == pytest.approx(fold["window_accuracy"], abs=1e-4)
        rec = info["test_metrics"]["recording"]["recording"]
        assert fold["recording_accuracy"] == pytest.approx(rec["accuracy"])
    for name in ("cv_summary.png", "cv_report.pdf"):
        assert (cv_dir / name).stat().st_size > 1000
    assert (cv_dir / "cv_report.pdf").read_bytes()[:5] == b"%PDF-"


def test_rerun_skips_done_folds_resumes_a_killed_one_and_restarts_an_empty_one(
    cv_run, cache_dir, capsys
):
    cv_dir, (data_dir, manifest, root) = cv_run
    done = cv_dir / "folds" / "rig=r0" / FOLD_RESULT
    stamp = done.stat().st_mtime_ns
    # A fold killed after its checkpoints: no result, no model card.
    killed = cv_dir / "folds" / "rig=r2"
    (killed / FOLD_RESULT).unlink()
    (killed / "model_info.json").unlink()
    # A fold killed before its first checkpoint.
    empty = cv_dir / "folds" / "rig=r3"
    for item in sorted(empty.rglob("*"), reverse=True):
        item.rmdir() if item.is_dir() else item.unlink()
    (empty / "training_log.txt").write_text("killed\n")
    capsys.readouterr()
    main(["cv", *_args(data_dir, manifest, root, cache_dir), "--cv.by", "rig"])
    out = capsys.readouterr().out
    assert "rig=r0: done before, skipped" in out and "rig=r1: done before, skipped" in out
    assert f"resuming rig=r2 from {killed / 'checkpoints' / 'last.ckpt'}" in out
    assert "rig=r3 stopped before its first checkpoint; starting it again" in out
    assert done.stat().st_mtime_ns == stamp
    assert (killed / FOLD_RESULT).is_file() and (empty / FOLD_RESULT).is_file()
    assert len(pd.read_csv(cv_dir / "cv_results.csv")) == 6


def test_same_name_with_other_options_is_refused(cv_run, cache_dir):
    _, (data_dir, manifest, root) = cv_run
    with pytest.raises(OutputLocationError, match="other fit options"):
        run_cv(
            data_dir,
            root,
            "rig",
            name="cv-rig",
            **{"data.manifest": str(manifest), "data.cache_dir": str(cache_dir)},
        )


def test_runner_runs_leave_one_out_with_last_block_validation(rig_data, cache_dir, tmp_path):
    data_dir, manifest, _ = rig_data
    args = _args(data_dir, manifest, tmp_path, cache_dir)
    settings, fit_args = parse_cv_args([*args, "--cv.by", "rig", "--cv.k", "2", "--cv.seed", "3"])
    assert settings.k == 2 and fit_args == args
    result = run_cv(
        data_dir,
        tmp_path,
        "rig",
        k=2,
        val_rule="last_block",
        baseline=False,
        report=False,
        **{k.removeprefix("--"): v for k, v in zip(args[2::2], args[3::2], strict=True)},
    )
    assert [r.fold for r in result.folds] == ["fold-1", "fold-2"]
    assert sorted(v for r in result.folds for v in r.test_values) == list(RIGS)
    for r in result.folds:
        assert r.baseline_window_accuracy is None and r.n_test == 10
        splits = json.loads((result.cv_dir / r.run_dir / "splits.json").read_text())
        for rec in splits["recordings"]:
            sides = [s["split"] for s in rec["segments"]]
            assert sides in (["test"], ["train", "val"])
    assert not (result.cv_dir / "cv_report.pdf").exists()


def test_cv_arguments_are_checked():
    with pytest.raises(DataValidationError, match=r"--cv\.by"):
        parse_cv_args(["--config", CNN])
    with pytest.raises(DataValidationError, match="unknown option"):
        parse_cv_args(["--cv.by", "rpm", "--cv.folds", "3"])
    with pytest.raises(DataValidationError, match="integer"):
        parse_cv_args(["--cv.by", "rpm", "--cv.k", "two"])
    settings, _ = parse_cv_args(["--cv.by", "rpm", "--cv.val_by", "load_hp"])
    assert settings.val_rule == "column"


def test_baseline_separates_tones_whatever_the_gain():
    """Classes differ in frequency, rigs in gain: the standardised log-PSD centroid holds."""
    rng = np.random.default_rng(0)
    t = np.arange(1024) / 1000.0

    def windows(freq, gain, n):
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        x = gain * np.sin(2 * np.pi * freq * t + phase) + 0.05 * rng.standard_normal((n, 1, 1024))
        return x.astype(np.float32)

    def batch(gain, rec0):
        x = np.concatenate([windows(50, gain, 20), windows(180, gain, 20)])
        y = np.repeat([0, 1], 20)
        rec = np.repeat([rec0, rec0 + 1], 20)
        return [(x, y, rec)]

    result = score_baseline(batch(1.0, 0), batch(3.0, 2), ["a", "b"], ["r0", "r1", "r2", "r3"])
    assert result["window"]["accuracy"] == 1.0 and result["window"]["n"] == 40
    assert result["recording"]["accuracy"] == 1.0 and result["recording"]["n"] == 2
    assert log_welch_psd(np.zeros((2, 3, 512))).shape == (2, 3 * 129)
