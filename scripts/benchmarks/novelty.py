"""Novelty detection (issue 11): false alarms and detection, beside the PCA/Mahalanobis reference.

Every run is ``fit --config configs/novelty.yaml`` through the CLI (in this process), read back
from its ``model_info.json`` and ``novelty_scores.csv``. Records are
``novelty_<dataset>_<quantity>``; docs/benchmarks.md holds the figures.

* ``monitoring``: the built-in monitoring scenario (340 healthy recordings, 112 of them for the
  test; 24 each of 5/10/20 % story stiffness loss and bumper contact). Targets: recording-level
  false-alarm rate <= 1 % and detection >= 0.95 for the 10 %, 20 % and bumper classes (the 5 %
  class as measured); window-level detection above the reference's for every class, at the same
  calibrated budget and at the same observed test false-alarm rate. The same data with a learned
  backbone (a CNN autoencoder of the spectrum) is recorded beside it: what else was tried.
* ``cwru``: trained on blocks of the one normal recording at 0 HP; all 9 fault recordings should
  alarm at recording level and the held-out normal block should not.
* ``uestc``: for each speed, trained on the normal recordings of the other three, then the
  exported ONNX model scores the normal recording at the held-out speed and every fault recording
  with the torch-free gateway predictor; once calibrated on held-out blocks of the training
  recordings (the default), once across the training speeds (``calibration: cross_group``).

The real data sets are looked for in ``../shared/data`` (or ``$DAMAGE_LIGHTNING_SHARED_DATA``)
and skipped with the reason when absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import REPO, Recorder, Size, at_least, rounded

SHARED_DATA = Path(os.environ.get("DAMAGE_LIGHTNING_SHARED_DATA", REPO.parent / "shared" / "data"))
UESTC_DIR = SHARED_DATA / "uestc_bearing_part1"
CWRU_NOVELTY_DIR = SHARED_DATA / "cwru_0hp_10class"
DETECTION_TARGET = 0.95
FAR_TARGET = 0.01
# The classes the issue holds to the detection target (the 5 % class is reported as measured).
TARGET_CLASSES = ("stiffness_loss_10", "stiffness_loss_20", "bumper_contact")
# A learned backbone, trained as an autoencoder of the spectrum: the alternative recorded.
AE_OVERRIDES = [
    *"--model.backbone cnn --trainer.max_epochs 15 --model.lr 0.002".split(),
    *("--model.backbone_args", "{widths: [16, 32, 64]}"),
]
CWRU_OVERRIDES = (
    "--data.healthy_label normal --data.sample_rate 12000 --data.window 2048 --data.hop 512 "
    "--data.n_fft 256 --data.hop_length 64 --data.f_max null"
).split()
UESTC_OVERRIDES = (
    "--data.sample_rate 20000 --data.split_strategy block --data.val_fraction 0.3 "
    "--data.test_fraction 0.15 --data.window 4096 --data.hop 2048 --data.n_fft 512 "
    "--data.hop_length 128 --data.f_max null"
).split()


def _fit(workdir: Path, name: str, overrides: list[str]) -> Path:
    """``fit --config configs/novelty.yaml`` with ``overrides``; the run folder."""
    from damage_lightning.cli import main

    root = workdir / "novelty-runs"
    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [
        *f"fit --config {REPO / 'configs' / 'novelty.yaml'} --run_name {name}".split(),
        *("--trainer.default_root_dir", str(root), "--data.cache_dir", str(workdir / "cache")),
        *("--report.llm", "false", *overrides),
    ]
    print(f"[benchmark] novelty: {' '.join(args)}", file=sys.stderr)
    try:
        main(args)
    except SystemExit as exc:  # the CLI's bad-input exit; the section records it as an error
        raise RuntimeError(f"fit {name} exited with status {exc.code}") from None
    return run_dir


def _card(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "model_info.json").read_text())["novelty"]


def _beats(mine: float | None, theirs: float | None) -> bool | None:
    # Higher detection; a tie at 1.0 (both catch every window) cannot be beaten and counts as met.
    if mine is None or theirs is None:
        return None
    return bool(mine > theirs or mine == theirs == 1.0)


def _equal_far_detection(run_dir: Path, rate: float) -> dict[str, dict[str, float]]:
    """Detection per class of detector and reference at one observed test window FAR.

    Both thresholds are the ``1 - rate`` quantile of the healthy test windows' own scores (an
    oracle threshold per detector), so the two are compared at exactly the same false-alarm rate.
    """
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(run_dir / "novelty_scores.csv")
    healthy = frame["label"] == _card(run_dir)["healthy_label"]
    out: dict[str, dict[str, float]] = {}
    for column in ("score", "reference_score"):
        if column in frame:
            threshold = float(np.quantile(frame.loc[healthy, column], 1.0 - rate))
            out[column] = {
                name: float((group[column] > threshold).mean())
                for name, group in frame[~healthy].groupby("label")
            }
    return out


def _level_records(
    rec: Recorder, prefix: str, result: dict[str, Any], params: dict[str, Any], targets: bool
) -> None:
    for level in ("window", "recording"):
        lv = result[level]
        far = lv["false_alarm_rate"]
        judged = targets and level == "recording"
        counts = {"false_alarms": lv["false_alarms"], "healthy": lv["healthy"]}
        rec.emit(f"{prefix}_{level}_false_alarm_rate", far, "fraction", {**params, **counts},
                 target=FAR_TARGET if judged else None,
                 met=bool(far <= FAR_TARGET) if judged and far is not None else None)  # fmt: skip
        rec.emit(f"{prefix}_{level}_auc", lv["roc_auc"], "", params)
        for name, rate in lv["detection"].items():
            target = DETECTION_TARGET if judged and name in TARGET_CLASSES else None
            rec.emit(f"{prefix}_{level}_detection_{name}", rate, "fraction",
                     {**params, f"{level}s": lv["counts"].get(name)}, target=target,
                     met=None if target is None else at_least(rate, target))  # fmt: skip


def bench_monitoring(rec: Recorder, workdir: Path, size: Size) -> None:
    """The monitoring scenario: the default detector, the reference and the autoencoder."""
    overrides: list[str] = []
    if size.name == "tiny":
        data = workdir / "novelty-monitoring-tiny"
        synth = f"data synth --out {data} --scenario monitoring --healthy-recordings 24 "
        synth += "--recordings-per-class 2 --samples 2048"
        subprocess.run([sys.executable, "-m", "damage_lightning", *synth.split()], check=True,
                       cwd=REPO, stdout=sys.stderr)  # fmt: skip
        overrides = ["--data.data_dir", str(data)]
    start = time.perf_counter()
    run_dir = _fit(workdir, "monitoring", overrides)
    card = _card(run_dir)
    params = {"run_dir": str(run_dir), "detector": card["detector"],
              "fit_wall_s": rounded(time.perf_counter() - start, 1),
              **{k: card[k] for k in ("calibration_recordings", "calibration_windows",
                                      "window_threshold", "recording_threshold")}}  # fmt: skip
    _level_records(rec, "novelty_monitoring", card["test"], params, targets=True)
    ref = card.get("reference")
    if ref:
        _level_records(rec, "novelty_monitoring_reference", ref, {"name": ref["name"]}, False)
        for name, rate in card["test"]["window"]["detection"].items():
            theirs = ref["window"]["detection"].get(name)
            rec.emit(f"novelty_monitoring_vs_reference_{name}", rate, "fraction",
                     {"reference": theirs, "level": "window", "budget": FAR_TARGET,
                      "rule": "both calibrated on the same healthy windows at the same budget"},
                     met=_beats(rate, theirs))  # fmt: skip
        equal = _equal_far_detection(run_dir, FAR_TARGET)
        for name, rate in equal.get("score", {}).items():
            theirs = equal.get("reference_score", {}).get(name)
            rec.emit(f"novelty_monitoring_equal_far_{name}", rate, "fraction",
                     {"reference": theirs, "test_window_false_alarm_rate": FAR_TARGET,
                      "rule": "each detector's threshold at the 99th percentile of its own "
                              "healthy test window scores"},
                     met=_beats(rate, theirs))  # fmt: skip
    if size.name == "tiny":
        return
    start = time.perf_counter()
    ae_dir = _fit(workdir, "monitoring-autoencoder", [*overrides, *AE_OVERRIDES])
    ae = _card(ae_dir)
    ae_params = {"run_dir": str(ae_dir), "detector": ae["detector"], "overrides": AE_OVERRIDES,
                 "fit_wall_s": rounded(time.perf_counter() - start, 1)}  # fmt: skip
    _level_records(rec, "novelty_monitoring_autoencoder", ae["test"], ae_params, targets=False)


def bench_cwru(rec: Recorder, workdir: Path, size: Size) -> None:
    """CWRU 0 HP: trained on blocks of the normal recording; every fault recording alarms?"""
    if not CWRU_NOVELTY_DIR.is_dir() or size.name == "tiny":
        reason = "left out of --size tiny" if size.name == "tiny" else "not there"
        rec.skipped("novelty_cwru_faults_alarmed", f"{CWRU_NOVELTY_DIR}: {reason}")
        return
    channels = ["--data.channels", "[DE_accel, FE_accel]"]
    run_dir = _fit(workdir, "cwru", ["--data.data_dir", str(CWRU_NOVELTY_DIR), *channels,
                                     *CWRU_OVERRIDES])  # fmt: skip
    card = _card(run_dir)
    test, window = card["test"]["recording"], card["test"]["window"]
    faults = dict(test["detection"])
    alarmed = sum(1 for r in faults.values() if r == 1.0)
    params = {"run_dir": str(run_dir), "per_fault": faults,
              **{k: card[k] for k in ("calibration_unit", "calibration_windows",
                                      "window_threshold", "recording_threshold")}}  # fmt: skip
    rec.emit("novelty_cwru_faults_alarmed", alarmed, "recordings", params, target=len(faults),
             met=alarmed == len(faults))  # fmt: skip
    rec.emit("novelty_cwru_normal_blocks_alarmed", test["false_alarms"], "blocks",
             {**params, "held_out_normal_blocks": test["healthy"]}, target=0,
             met=test["false_alarms"] == 0)  # fmt: skip
    counts = {"false_alarms": window["false_alarms"], "windows": window["healthy"]}
    rec.emit("novelty_cwru_normal_window_false_alarm_rate", window["false_alarm_rate"],
             "fraction", counts)  # fmt: skip
    ref = card.get("reference")
    if ref:
        ref_alarmed = sum(1 for r in ref["recording"]["detection"].values() if r == 1.0)
        rec.emit("novelty_cwru_reference_faults_alarmed", ref_alarmed, "recordings",
                 {"normal_blocks_alarmed": ref["recording"]["false_alarms"]})  # fmt: skip


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _uestc_fold(rec: Recorder, workdir: Path, rpm: int, calibration: str, manifest: Any) -> None:
    from damage_lightning.deploy.predict import predict

    normal = manifest[manifest["label"] == "normal"]
    train_dir = workdir / f"uestc-normal-without-{rpm}"
    if not train_dir.is_dir():
        for path in normal[normal["rpm"] != rpm]["path"]:
            _link_or_copy(UESTC_DIR / path, train_dir / path)
    run_dir = _fit(workdir, f"uestc-{calibration}-{rpm}",
                   ["--data.data_dir", str(train_dir), "--model.calibration", calibration,
                    *UESTC_OVERRIDES])  # fmt: skip
    card = _card(run_dir)
    result = predict(run_dir / "export" / "model.onnx", UESTC_DIR, keep_windows=True)
    rows = result.recordings.merge(manifest, on=["path", "label"])
    windows = result.windows
    held = rows[(rows["label"] == "normal") & (rows["rpm"] == rpm)]
    held_windows = windows[windows["recording"].isin(held["path"])]
    faults = rows[rows["label"] != "normal"]
    fault_windows = windows[windows["recording"].isin(faults["path"])]
    prefix = f"novelty_uestc_{calibration}_{rpm}"
    params = {"run_dir": str(run_dir), "held_out_rpm": rpm, "calibration": calibration,
              "trained_rpm": sorted(int(r) for r in normal["rpm"] if r != rpm),
              **{k: card[k] for k in ("calibration_unit", "calibration_windows",
                                      "window_threshold", "recording_threshold")},
              "fault_alarms": dict(zip(faults["path"], faults["alarm"].astype(bool),
                                       strict=True))}  # fmt: skip
    rec.emit(f"{prefix}_normal_recording_alarm", bool(held["alarm"].iloc[0]), "",
             {**params, "score": float(held["score"].iloc[0])}, target=False,
             met=not bool(held["alarm"].iloc[0]))  # fmt: skip
    rec.emit(f"{prefix}_normal_window_false_alarm_rate", float(held_windows["alarm"].mean()),
             "fraction", {"windows": len(held_windows)})  # fmt: skip
    rec.emit(f"{prefix}_faults_alarmed", int(faults["alarm"].sum()), "recordings",
             {"faults": len(faults),
              "at_held_out_speed": int(faults[faults["rpm"] == rpm]["alarm"].sum())},
             target=len(faults), met=bool(faults["alarm"].all()))  # fmt: skip
    per_class = {name: float(fault_windows[fault_windows["label"] == name]["alarm"].mean())
                 for name in sorted(set(faults["label"]))}  # fmt: skip
    rec.emit(f"{prefix}_fault_window_detection", float(fault_windows["alarm"].mean()),
             "fraction", {"windows": len(fault_windows), "per_class": per_class})  # fmt: skip


def bench_uestc(rec: Recorder, workdir: Path, size: Size) -> None:
    """UESTC: leave one speed out; false alarms at the held-out speed, faults detected."""
    import pandas as pd

    if not UESTC_DIR.is_dir() or size.name == "tiny":
        reason = "left out of --size tiny" if size.name == "tiny" else "not there"
        rec.skipped("novelty_uestc", f"{UESTC_DIR}: {reason}")
        return
    manifest = pd.read_csv(UESTC_DIR / "manifest.csv")
    for calibration in ("holdout", "cross_group"):
        for rpm in sorted(int(r) for r in manifest["rpm"].unique()):
            _uestc_fold(rec, workdir, rpm, calibration, manifest)


def bench_novelty(rec: Recorder, workdir: Path, size: Size) -> None:
    """All three: the monitoring scenario, CWRU, UESTC (the real data skip when absent)."""
    bench_monitoring(rec, workdir, size)
    bench_cwru(rec, workdir, size)
    bench_uestc(rec, workdir, size)
