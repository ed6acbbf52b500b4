"""The sensor-health gate in training and in ``predict``: ``data.health`` warn, exclude_recording,
exclude_windows and off on a small built-in dataset with one faulty recording; ``predict`` flags
the windows of an unhealthy sensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.errors import DataValidationError
from damage_lightning.run import write_predictions

WINDOW, HOP = 256, 128
BAD = "story1_stiffness_loss/story1_stiffness_loss_001.csv"
ZEROS = (700, 800)


def _zero(path: Path, channel: str = "floor1", rows: tuple[int, int] = ZEROS) -> None:
    frame = pd.read_csv(path)
    frame.loc[rows[0] : rows[1] - 1, channel] = 0.0
    frame.to_csv(path, index=False, float_format="%.6g")


@pytest.fixture
def faulty_data(tiny_data, tmp_path) -> Path:
    """The tiny built-in dataset with 100 zeros (a dropout) in one recording's floor1."""
    root = Path(shutil.copytree(tiny_data, tmp_path / "frame"))
    _zero(root / BAD)
    return root


def _dm(root: Path, tmp_path: Path, health: str, **kwargs) -> DamageDataModule:
    return DamageDataModule(
        data_dir=str(root),
        cache_dir=str(tmp_path / "cache"),
        window=WINDOW,
        hop=HOP,
        n_fft=64,
        hop_length=16,
        f_max=None,
        health=health,
        **kwargs,
    )


def _windows_of(dm: DamageDataModule, relpath: str) -> np.ndarray:
    """Start samples of the windows of one recording, over all splits."""
    r = [x.relpath for x in dm.dataset.recordings].index(relpath)
    index = np.concatenate([dm.indices[s] for s in ("train", "val", "test")])
    return np.sort(index[index[:, 0] == r, 1])


def _overlap(starts: np.ndarray) -> np.ndarray:
    return (starts < ZEROS[1]) & (starts + WINDOW > ZEROS[0])


def test_warn_names_the_fault_and_keeps_every_window(faulty_data, tmp_path, capsys):
    dm = _dm(faulty_data, tmp_path, "warn")
    dm.setup("fit")
    err = capsys.readouterr().err
    assert f"sensor health: {BAD} (channel 'floor1', samples 700-800): dropout:" in err
    assert err.count("sensor health:") == 1, "the clean built-in recordings give no finding"
    card = dm.sensor_health
    assert card.action == "warn" and card.recordings_checked == 20
    assert [(f.file, f.channel, f.start, f.stop, f.kind) for f in card.findings] == [
        (BAD, "floor1", 700, 800, "dropout")
    ]
    starts = _windows_of(dm, BAD)
    assert sum(card.flagged_windows.values()) == _overlap(starts).sum() > 0
    assert len(dm.dataset.recordings) == 20
    # The reference the exported model will carry.
    from damage_lightning.export.spec import ExportSpec

    spec = ExportSpec.of(object(), dm)
    assert spec.health_reference == dm.health_reference.to_json()
    assert spec.health_reference["channels"] == dm.channels


def test_exclude_windows_drops_exactly_the_windows_at_the_fault(faulty_data, tmp_path):
    warn = _dm(faulty_data, tmp_path, "warn")
    warn.setup("fit")
    dm = _dm(faulty_data, tmp_path, "exclude_windows")
    dm.setup("fit")
    before, after = _windows_of(warn, BAD), _windows_of(dm, BAD)
    np.testing.assert_array_equal(after, before[~_overlap(before)])
    total = sum(len(dm.indices[s]) for s in ("train", "val", "test"))
    flagged = int(_overlap(before).sum())
    assert flagged == 3  # starts 512, 640 and 768 reach into samples 700-800
    assert total == sum(len(warn.indices[s]) for s in ("train", "val", "test")) - flagged
    assert dm.sensor_health.flagged_windows == warn.sensor_health.flagged_windows


def test_exclude_recording_leaves_the_faulty_recording_out_of_every_split(faulty_data, tmp_path):
    dm = _dm(faulty_data, tmp_path, "exclude_recording")
    dm.setup("fit")
    names = [r.relpath for r in dm.dataset.recordings]
    assert BAD not in names and len(names) == 19
    assert dm.sensor_health.excluded_recordings == [BAD]
    assert BAD not in {r["path"] for r in dm.splits_json()["recordings"]}
    assert dm.data_summary()["n_recordings"] == 19


def test_exclude_recording_that_empties_a_class_is_a_clear_error(faulty_data, tmp_path):
    for path in (faulty_data / "bumper_contact").glob("*.csv"):
        _zero(path, "base", (100, 150))
    dm = _dm(faulty_data, tmp_path, "exclude_recording")
    with pytest.raises(DataValidationError) as info:
        dm.setup("fit")
    text = str(info.value)
    assert "exclude_recording leaves class 'bumper_contact' without recordings" in text
    assert "bumper_contact/bumper_contact_000.csv" in text


def test_off_checks_nothing(faulty_data, tmp_path, capsys):
    dm = _dm(faulty_data, tmp_path, "off")
    dm.setup("fit")
    assert "sensor health" not in capsys.readouterr().err
    assert dm.sensor_health is None and dm.health_reference is None


def test_predict_flags_windows_of_an_unhealthy_sensor(tiny_data, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    src = tiny_data / "undamaged"
    for name in ("undamaged_000.csv", "undamaged_001.csv", "undamaged_002.csv"):
        shutil.copy(src / name, new / name)
    _zero(new / "undamaged_001.csv")
    dead = pd.read_csv(new / "undamaged_002.csv")
    dead["floor3"] = 0.0
    dead.to_csv(new / "undamaged_002.csv", index=False)
    dm = _dm(tiny_data, tmp_path, "warn", predict_data_dir=str(new))
    dm.setup("predict")
    outputs = []
    for _, _, rec, start in dm.predict_dataloader():
        probs = torch.zeros(len(rec), dm.num_classes)
        probs[:, 1] = 1.0
        outputs.append({"probabilities": probs, "recording": rec, "start": start})
    write_predictions(outputs, dm, tmp_path / "out")
    windows = pd.read_csv(tmp_path / "out" / "predictions.csv")
    recs = pd.read_csv(tmp_path / "out" / "recording_predictions.csv").set_index("path")
    part = windows[windows["recording"] == "undamaged_001.csv"]
    np.testing.assert_array_equal(~part["sensor_ok"].to_numpy(), _overlap(part["start"].to_numpy()))
    assert set(part.loc[~part["sensor_ok"], "sensor_reason"]) == {"dropout floor1"}
    assert recs.loc["undamaged_001.csv", "n_flagged"] == 3
    assert recs.loc["undamaged_001.csv", "n_windows"] == len(part) - 3
    assert recs.loc["undamaged_001.csv", "predicted_label"] == dm.class_names[1]
    assert recs.loc["undamaged_002.csv", "predicted_label"] == "sensor_fault"
    assert recs.loc["undamaged_000.csv", "n_flagged"] == 0
    assert windows.loc[windows["recording"] == "undamaged_000.csv", "sensor_ok"].all()
