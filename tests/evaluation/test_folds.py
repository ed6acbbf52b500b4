"""Cross-validation folds: every value tests exactly once, never trains or validates its own fold,
groups never cross splits, and validation follows the chosen rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from damage_lightning.data.splits import plan_splits
from damage_lightning.errors import DataValidationError
from damage_lightning.evaluation.folds import (
    FoldPlan,
    column_values,
    fold_manifest,
    manifest_rows,
    plan_folds,
    quantile_bins,
)
from damage_lightning.io.discovery import RecordingSpec


def _specs(rows: list[dict[str, str]]) -> list[RecordingSpec]:
    out = []
    for i, row in enumerate(rows):
        meta = {k: v for k, v in row.items() if k not in ("label", "group")}
        out.append(
            RecordingSpec(
                path=Path(f"/data/r{i}.csv"),
                relpath=f"r{i}.csv",
                label=row["label"],
                group=row.get("group"),
                metadata=meta,
            )
        )
    return out


def _bearing(speeds=(800, 1000, 1200, 1400), loads=(0, 1)) -> list[RecordingSpec]:
    """Three classes recorded at every speed and load: one recording each."""
    rows = [
        {"label": c, "rpm": str(s), "load_hp": str(h)}
        for c in ("normal", "inner", "outer")
        for s in speeds
        for h in loads
    ]
    return _specs(rows)


def _check_plan(plan: FoldPlan, specs: list[RecordingSpec]) -> None:
    values = plan.values
    tested: list[str] = []
    for fold in plan.folds:
        test_values = set(fold.test_values)
        tested += list(fold.test_values)
        for value, split in zip(values, fold.splits, strict=True):
            # The test value is the test, all of it, and nowhere else.
            assert (split == "test") == (value in test_values)
        # Groups never cross splits (train+val counts as the training side).
        sides: dict[str, set[str]] = {}
        for spec, split in zip(specs, fold.splits, strict=True):
            if spec.group:
                sides.setdefault(spec.group, set()).add(split)
        assert all(len(s) == 1 for s in sides.values())
    assert sorted(tested) == sorted({v for v in values if v})


def test_leave_one_speed_out_tests_each_speed_once_and_validates_on_another():
    specs = _bearing()
    plan = plan_folds(specs, "rpm")
    _check_plan(plan, specs)
    assert [f.test_values for f in plan.folds] == [("800",), ("1000",), ("1200",), ("1400",)]
    for fold in plan.folds:
        (val,) = fold.val_values
        assert val not in fold.test_values
        for value, split in zip(plan.values, fold.splits, strict=True):
            assert (split == "val") == (value == val)
        assert fold.count("train") == 12 and fold.count("val") == 6 and fold.count("test") == 6


def test_val_by_another_column_never_takes_the_test_value():
    specs = _bearing()
    plan = plan_folds(specs, "rpm", val_rule="column", val_by="load_hp")
    _check_plan(plan, specs)
    loads = column_values(specs, "load_hp")
    for fold in plan.folds:
        (val_load,) = fold.val_values
        for value, load, split in zip(plan.values, loads, fold.splits, strict=True):
            if split == "val":
                assert load == val_load and value not in fold.test_values
            if value not in fold.test_values and load == val_load:
                assert split == "val"
        assert fold.count("train") > 0


def test_last_block_validates_inside_every_training_recording():
    specs = _bearing(speeds=(800, 1000))
    plan = plan_folds(specs, "rpm", val_rule="last_block")
    _check_plan(plan, specs)
    for fold in plan.folds:
        assert set(fold.splits) == {"test", "train+val"}
        assert fold.val_values == ()


def test_same_rule_needs_three_values():
    with pytest.raises(DataValidationError, match="3 or more folds"):
        plan_folds(_bearing(speeds=(800, 1000)), "rpm")


def test_k_folds_cover_every_value_once_and_are_seeded():
    specs = _specs(
        [{"label": c, "rig": f"rig{r}"} for c in ("healthy", "damaged") for r in range(7)]
    )
    plan = plan_folds(specs, "rig", k=3, seed=5)
    _check_plan(plan, specs)
    assert len(plan.folds) == 3
    assert [len(f.test_values) for f in plan.folds] in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    again = plan_folds(specs, "rig", k=3, seed=5)
    assert again == plan
    other = plan_folds(specs, "rig", k=3, seed=6)
    assert [f.test_values for f in other.folds] != [f.test_values for f in plan.folds]


def test_by_recording_keeps_groups_whole():
    rows = [
        {"label": c, "group": f"{c}-unit{u}"} for c in ("a", "b") for u in range(3) for _ in (0, 1)
    ]
    specs = _specs(rows)
    plan = plan_folds(specs, "recording")
    _check_plan(plan, specs)
    assert len(plan.folds) == 6
    for fold in plan.folds:
        assert fold.count("test") == 2


def test_a_column_that_cuts_a_group_is_refused():
    rows = [{"label": c, "group": "g1", "rpm": s} for c, s in (("a", "800"), ("b", "1000"))]
    rows += [{"label": c, "group": f"g{c}", "rpm": "1200"} for c in ("a", "b")]
    with pytest.raises(DataValidationError, match="group"):
        plan_folds(_specs(rows), "rpm")


def test_a_class_missing_from_training_names_fold_and_class():
    rows = [{"label": "a", "rig": r} for r in ("x", "y", "z")]
    rows += [{"label": "b", "rig": "x"}]
    with pytest.raises(DataValidationError) as err:
        plan_folds(_specs(rows), "rig")
    text = str(err.value)
    assert "fold rig=x" in text and "'b'" in text


def test_unknown_column_lists_the_columns():
    with pytest.raises(DataValidationError, match="load_hp"):
        plan_folds(_bearing(), "fault_size")


def test_quantile_bins_split_a_numeric_column_into_halves():
    values = [str(x) for x in np.linspace(-0.05, 0.05, 10)]
    binned = quantile_bins(values, 2, "drift")
    assert len(set(binned)) == 2
    assert binned[:5] == [binned[0]] * 5 and binned[5:] == [binned[9]] * 5
    assert quantile_bins(["1", "", "2"], 2, "x")[1] == ""
    with pytest.raises(DataValidationError, match="'warm'"):
        quantile_bins(["1", "warm"], 2, "temperature")


def test_recordings_without_a_value_always_train():
    rows = [{"label": c, "size": s} for c in ("ball", "inner") for s in ("7", "14", "21")]
    rows.append({"label": "ball", "size": ""})
    specs = _specs(rows)
    plan = plan_folds(specs, "size")
    for fold in plan.folds:
        assert fold.splits[-1] == "train"


def test_plan_round_trips_through_json():
    plan = plan_folds(_bearing(), "rpm", val_rule="column", val_by="load_hp")
    assert FoldPlan.from_json(plan.to_json()) == plan


def test_fold_manifest_drives_the_explicit_split_without_leakage():
    """The fold's manifest, read back, gives the DataModule's explicit split exactly."""
    specs = _bearing(speeds=(800, 1000))
    plan = plan_folds(specs, "rpm", val_rule="last_block")
    header, rows = manifest_rows(specs)
    text = fold_manifest(header, rows, plan.folds[0])
    lines = text.splitlines()
    assert lines[0].split(",")[-1] == "split"
    splits = [line.split(",")[-1] for line in lines[1:]]
    assert splits == list(plan.folds[0].splits)
    lengths = [10_000] * len(specs)
    split_plan = plan_splits(
        [s.label for s in specs], lengths, 1000, 500, explicit=splits, fractions=(0.7, 0.15, 0.15)
    )
    assert split_plan.check_no_leakage()["passed"]
    for i, split in enumerate(splits):
        segs = [s for s in split_plan.segments if s.recording == i]
        if split == "test":
            assert [(s.split, s.start, s.stop) for s in segs] == [("test", 0, 10_000)]
        else:
            train, val = sorted(segs, key=lambda s: s.start)
            assert (train.split, val.split) == ("train", "val")
            # The validation tail is the end of the recording, one window away from training.
            assert val.stop == 10_000 and val.start - train.stop == 1000
            assert val.stop - val.start == round(0.15 / 0.85 * 10_000)


def test_train_val_recording_too_short_is_named():
    with pytest.raises(DataValidationError, match=r"r0\.csv"):
        plan_splits(
            ["a", "b", "a", "b"],
            [2500, 10_000, 10_000, 10_000],
            1000,
            500,
            explicit=["train+val", "train+val", "test", "test"],
            relpaths=["r0.csv", "r1.csv", "r2.csv", "r3.csv"],
        )
