"""Healthy-only data: the monitoring scenario, and a split whose calibration is never training."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.data.monitoring import CLASS_NAMES, HEALTHY, STIFFNESS_LOSSES
from damage_lightning.data.synthetic import generate_dataset, main_synth
from damage_lightning.errors import DataValidationError

SMALL = {"recordings_per_class": 2, "n_samples": 2048, "healthy_recordings": 12}
DATA = {
    "window": 256,
    "hop": 128,
    "n_fft": 64,
    "hop_length": 16,
    "f_max": None,
    "center": False,
    "average_frames": True,
    "batch_size": 32,
}


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mon") / "monitoring"
    return generate_dataset(out, seed=3, scenario="monitoring", **SMALL)


def test_monitoring_scenario_has_healthy_and_graded_damage(monitoring: Path) -> None:
    manifest = pd.read_csv(monitoring / "manifest.csv")
    assert manifest.groupby("label").size().to_dict() == {
        HEALTHY: 12,
        **dict.fromkeys(CLASS_NAMES[1:], 2),
    }
    for label, severity in STIFFNESS_LOSSES.items():
        rows = manifest[manifest["label"] == label]
        assert np.allclose(rows["severity"], severity)
        assert set(rows["damaged_story"]) <= {1, 2, 3}
    healthy = manifest[manifest["label"] == HEALTHY]
    assert (healthy["severity"] == 0).all() and healthy["gap"].isna().all()
    # The conditions vary from recording to recording: temperature drift, mass, excitation.
    for column in ("drift", "added_mass_fraction", "excitation_rms"):
        assert healthy[column].std() > 0


def test_monitoring_scenario_is_deterministic(monitoring: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "again", seed=3, scenario="monitoring", **SMALL)
    for rel in (
        "manifest.csv",
        "healthy/healthy_005.csv",
        "stiffness_loss_05/stiffness_loss_05_001.csv",
    ):
        assert (again / rel).read_bytes() == (monitoring / rel).read_bytes()


def test_data_synth_writes_the_scenario(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main_synth(
        [
            "--out",
            str(tmp_path / "m"),
            "--scenario",
            "monitoring",
            "--healthy-recordings",
            "3",
            "--recordings-per-class",
            "1",
            "--samples",
            "512",
        ]
    )
    assert code == 0
    assert "7 recordings (5 classes: healthy, stiffness_loss_05" in capsys.readouterr().out


def test_calibration_windows_never_come_from_training_recordings(
    monitoring: Path, tmp_path: Path
) -> None:
    dm = DamageDataModule(
        str(monitoring),
        healthy_label=HEALTHY,
        val_fraction=0.3,
        test_fraction=0.3,
        cache_dir=str(tmp_path),
        **DATA,
    )
    assert dm.novelty and dm.class_names[0] == HEALTHY and dm.num_classes == 5
    dm.setup("fit")
    labels = np.array(dm.dataset.labels)
    recordings = {s: set(dm.indices[s][:, 0].tolist()) for s in ("train", "val", "test")}
    assert recordings["train"] and recordings["val"]
    assert not recordings["train"] & recordings["val"]
    assert not recordings["train"] & recordings["test"]
    assert not recordings["val"] & recordings["test"]
    # Only healthy recordings are trained and calibrated on; every damaged one is tested whole.
    assert set(labels[list(recordings["train"] | recordings["val"])]) == {HEALTHY}
    damaged = set(np.flatnonzero(labels != HEALTHY).tolist())
    assert damaged <= recordings["test"]
    # Validation and test batches carry the recording of every window.
    _, label, recording, _ = next(iter(dm.val_dataloader()))
    assert set(recording.tolist()) <= recordings["val"] and (label == 0).all()
    _, _, train_recording, _ = next(iter(dm.train_dataloader()))
    assert set(train_recording.tolist()) <= recordings["train"]


def test_one_class_data_split_into_blocks_without_overlap(monitoring: Path, tmp_path: Path) -> None:
    one = tmp_path / "one" / "normal"
    one.mkdir(parents=True)
    for name in ("healthy_000.csv", "healthy_001.csv"):
        (one / name).write_bytes((monitoring / "healthy" / name).read_bytes())
    dm = DamageDataModule(
        str(one.parent), sample_rate=1024.0, cache_dir=str(tmp_path / "c"), **DATA
    )
    assert dm.novelty and dm.healthy_class == "normal" and dm.class_names == ["normal"]
    dm.setup("fit")
    assert dm.plan.strategy == "block"
    assert dm.plan.check_no_leakage()["passed"]
    for r in (0, 1):
        segs = sorted((s for s in dm.plan.segments if s.recording == r), key=lambda s: s.start)
        for a, b in itertools.pairwise(segs):
            assert b.start - a.stop >= dm.window  # a gap of one window between splits


def test_a_healthy_label_that_is_not_in_the_data_is_named(monitoring: Path, tmp_path: Path) -> None:
    dm = DamageDataModule(str(monitoring), healthy_label="normal", cache_dir=str(tmp_path), **DATA)
    with pytest.raises(DataValidationError, match=r"healthy_label 'normal' is not a label"):
        _ = dm.class_names


@pytest.mark.parametrize("stft", ["torch", "conv"])
def test_welch_front_end_is_the_log_mean_power_of_the_frames_inside_the_window(stft: str) -> None:
    import torch

    from damage_lightning.data.frontend import SpectrogramFrontend

    fe = SpectrogramFrontend(1024.0, 2, kind="stft", n_fft=128, hop_length=32, top_db=None,
                             center=False, average_frames=True, stft=stft)  # fmt: skip
    x = torch.randn(3, 2, 1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = fe(x.float())
    assert tuple(out.shape) == (3, *fe.output_shape(1024)) == (3, 2, 65, 1)
    window = torch.hann_window(128, dtype=torch.float64)
    frames = torch.stack([x[..., s : s + 128] for s in range(0, 1024 - 128 + 1, 32)])  # 29
    power = (torch.fft.rfft(frames * window, dim=-1).abs() ** 2).mean(dim=0)
    expected = 10 * torch.log10(power.clamp(min=1e-10))
    torch.testing.assert_close(out[..., 0].double(), expected, atol=1e-3, rtol=0)
