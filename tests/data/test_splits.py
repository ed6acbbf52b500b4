"""Split plans: no sample or group in two splits, every class in every split, clear errors."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import numpy as np
import pytest

from damage_lightning.data.splits import SPLITS, Segment, SplitPlan, plan_splits
from damage_lightning.errors import DataValidationError

N_CONFIGS = 50


def _random_dataset(rng: np.random.Generator, min_per_class: int) -> dict:
    """A random small dataset: 2-4 classes, a few recordings each, lengths of 5-20 windows."""
    window = int(rng.choice([16, 32, 64]))
    hop = int(rng.choice([window // 4, window // 2, window]))
    n_classes = int(rng.integers(2, 5))
    labels = [f"c{c}" for c in range(n_classes) for _ in range(int(rng.integers(min_per_class, 7)))]
    rng.shuffle(labels)
    lengths = [int(rng.integers(5 * window, 20 * window + 1)) for _ in labels]
    return {"labels": labels, "lengths": lengths, "window": window, "hop": hop}


def _random_groups(rng: np.random.Generator, labels: list[str]) -> list[str | None]:
    """Groups shared by several classes, each class in at least 3 groups, some recordings alone."""
    n_groups = int(rng.integers(3, 8))
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    groups: list[str | None] = [None] * len(labels)
    for idx in by_class.values():
        first = rng.choice(n_groups, size=3, replace=False)
        for k, i in enumerate(idx):
            if k < 3:
                groups[i] = f"g{first[k]}"
            elif rng.random() < 0.2:
                groups[i] = None  # a recording without a group is a group of its own
            else:
                groups[i] = f"g{rng.integers(n_groups)}"
    return groups


def _random_explicit(rng: np.random.Generator, labels: list[str]) -> list[str]:
    """Every class has a training recording and every split has some recording."""
    while True:
        explicit = [str(rng.choice(SPLITS)) for _ in labels]
        train_classes = {lab for lab, s in zip(labels, explicit, strict=True) if s == "train"}
        if set(explicit) == set(SPLITS) and train_classes == set(labels):
            return explicit


def _assert_leakage_free(
    plan: SplitPlan, lengths: list[int], groups: list[str | None] | None = None
) -> None:
    """Independent check: sample ownership per recording, and groups per split."""
    for r, length in enumerate(lengths):
        owner = np.full(length, -1)
        for seg in (s for s in plan.segments if s.recording == r):
            assert 0 <= seg.start < seg.stop <= length
            assert (owner[seg.start : seg.stop] == -1).all(), f"recording {r}: sample reused"
            owner[seg.start : seg.stop] = SPLITS.index(seg.split)
    if groups is not None:
        splits_of = defaultdict(set)
        for seg in plan.segments:
            if groups[seg.recording] is not None:
                splits_of[groups[seg.recording]].add(seg.split)
        assert all(len(s) == 1 for s in splits_of.values())
    assert plan.check_no_leakage(groups) == {
        "passed": True,
        "overlapping_ranges": 0,
        "shared_groups": 0,
    }


def _windows_per_class(plan: SplitPlan, labels: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {s: defaultdict(int) for s in SPLITS}
    for seg in plan.segments:
        n = max(0, (seg.stop - seg.start - plan.window) // plan.hop + 1)
        out[seg.split][labels[seg.recording]] += n
    return out


def _assert_every_class_everywhere(plan: SplitPlan, labels: list[str]) -> None:
    counts = _windows_per_class(plan, labels)
    for split in SPLITS:
        for label in set(labels):
            assert counts[split][label] >= 1, f"class {label} has no window in {split}"


@pytest.mark.parametrize("strategy", ["recording", "block", "group", "explicit"])
def test_random_datasets_never_leak(strategy: str) -> None:
    rng = np.random.default_rng(1234)
    for _ in range(N_CONFIGS):
        ds = _random_dataset(rng, min_per_class=3 if strategy != "block" else 1)
        groups = _random_groups(rng, ds["labels"]) if strategy == "group" else None
        explicit = _random_explicit(rng, ds["labels"]) if strategy == "explicit" else None
        seed = int(rng.integers(1000))
        plan = plan_splits(**ds, groups=groups, explicit=explicit, seed=seed, strategy=strategy)
        assert plan.strategy == strategy
        _assert_leakage_free(plan, ds["lengths"], groups)
        if strategy == "explicit":
            got = {seg.recording: seg.split for seg in plan.segments}
            assert got == dict(enumerate(explicit))
        else:
            _assert_every_class_everywhere(plan, ds["labels"])
        if strategy == "block":
            assert plan.gap == ds["window"]
        again = plan_splits(**ds, groups=groups, explicit=explicit, seed=seed, strategy=strategy)
        assert again == plan


def test_whole_recordings_unless_block() -> None:
    rng = np.random.default_rng(7)
    ds = _random_dataset(rng, min_per_class=3)
    plan = plan_splits(**ds, strategy="recording")
    assert len(plan.segments) == len(ds["labels"])
    assert all(s.start == 0 and s.stop == ds["lengths"][s.recording] for s in plan.segments)
    assert plan.gap == 0


def test_block_gaps_separate_splits_by_a_window() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        ds = _random_dataset(rng, min_per_class=1)
        plan = plan_splits(**ds, strategy="block", seed=int(rng.integers(100)))
        for r in range(len(ds["labels"])):
            segs = sorted((s for s in plan.segments if s.recording == r), key=lambda s: s.start)
            assert sorted(s.split for s in segs) == sorted(SPLITS)
            for a, b in itertools.pairwise(segs):
                assert b.start - a.stop >= ds["window"]


def test_block_positions_vary_between_recordings() -> None:
    plan = plan_splits(["a", "b"] * 10, [5000] * 20, window=100, hop=50, strategy="block", seed=0)
    first = {next(s.split for s in plan.segments if s.recording == r) for r in range(20)}
    assert first == set(SPLITS)


def test_recording_counts_follow_fractions() -> None:
    labels = ["a"] * 20 + ["b"] * 3 + ["c"] * 4
    plan = plan_splits(labels, [1000] * len(labels), window=100, hop=50, seed=5)
    assert plan.strategy == "recording"
    per = {s: defaultdict(int) for s in SPLITS}
    for seg in plan.segments:
        per[seg.split][labels[seg.recording]] += 1
    assert (per["train"]["a"], per["val"]["a"], per["test"]["a"]) == (14, 3, 3)
    assert (per["train"]["b"], per["val"]["b"], per["test"]["b"]) == (1, 1, 1)
    assert (per["train"]["c"], per["val"]["c"], per["test"]["c"]) == (2, 1, 1)


def test_block_windows_follow_fractions() -> None:
    plan = plan_splits(["a", "b"], [100_000, 100_000], window=256, hop=128, seed=1)
    assert plan.strategy == "block"
    summary = plan.summary(["a", "b"])
    total = sum(summary[s]["windows"] for s in SPLITS)
    for split, frac in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        assert summary[split]["windows"] / total == pytest.approx(frac, abs=0.01)


def test_group_fractions_are_approached_per_class() -> None:
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for g in range(40):
        for label in rng.choice(["a", "b", "c"], size=int(rng.integers(1, 3)), replace=False):
            labels.append(str(label))
            groups.append(f"unit{g}")
    plan = plan_splits(labels, [1000] * len(labels), window=100, hop=100, groups=groups, seed=2)
    assert plan.strategy == "group"
    _assert_leakage_free(plan, [1000] * len(labels), groups)
    counts = _windows_per_class(plan, labels)
    for label in "abc":
        total = sum(counts[s][label] for s in SPLITS)
        assert counts["train"][label] / total == pytest.approx(0.7, abs=0.12)
        assert counts["test"][label] / total == pytest.approx(0.15, abs=0.1)


def test_seed_changes_assignment_and_is_reproducible() -> None:
    labels = ["a"] * 10 + ["b"] * 10
    plans = [plan_splits(labels, [500] * 20, window=100, hop=50, seed=s) for s in (1, 1, 2)]
    assert plans[0] == plans[1]
    assert plans[0].segments != plans[2].segments


def test_auto_strategy_choice() -> None:
    labels = ["a", "a", "a", "b", "b", "b"]
    lengths = [1000] * 6
    kw = {"window": 100, "hop": 100}
    assert plan_splits(labels, lengths, **kw).strategy == "recording"
    assert plan_splits(labels[1:], lengths[1:], **kw).strategy == "block"
    groups = ["g1", "g2", "g3", "g1", "g2", "g3"]
    assert plan_splits(labels, lengths, **kw, groups=groups).strategy == "group"
    assert plan_splits(labels, lengths, **kw, groups=[None] * 6).strategy == "recording"
    explicit = ["train", "val", "test", "train", "val", "test"]
    assert plan_splits(labels, lengths, **kw, explicit=explicit).strategy == "explicit"


def test_zero_test_fraction_leaves_test_empty() -> None:
    labels = ["a", "a", "b", "b"]
    plan = plan_splits(labels, [1000] * 4, window=100, hop=100, fractions=(0.8, 0.2, 0.0))
    assert plan.strategy == "recording"
    assert plan.segments_for("test") == []
    assert {labels[s.recording] for s in plan.segments_for("val")} == {"a", "b"}
    block = plan_splits(["a", "b"], [1000] * 2, 100, 100, fractions=(0.8, 0.2, 0.0))
    assert block.segments_for("test") == [] and len(block.segments_for("val")) == 2


def test_json_round_trip_and_schema() -> None:
    labels = ["normal", "fault"]
    relpaths = ["normal/x.csv", "fault/y.csv"]
    plan = plan_splits(labels, [10_000, 12_000], window=256, hop=128, relpaths=relpaths)
    doc = json.loads(json.dumps(plan.to_json(relpaths, labels, [None, None], [10_000, 12_000])))
    assert doc["strategy"] == "block" and doc["gap_samples"] == 256
    assert doc["fractions"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert (doc["window"], doc["hop"], doc["seed"]) == (256, 128, 42)
    rec = doc["recordings"][1]
    assert (rec["path"], rec["label"], rec["group"], rec["n_samples"]) == (
        "fault/y.csv",
        "fault",
        None,
        12_000,
    )
    assert [s["start"] for s in rec["segments"]] == sorted(s["start"] for s in rec["segments"])
    assert SplitPlan.from_json(doc) == plan


def test_summary_counts() -> None:
    labels = ["a"] * 3 + ["b"] * 3
    groups = ["u1", "u2", "u3", "u1", "u2", "u3"]
    plan = plan_splits(labels, [1000] * 6, window=100, hop=100, groups=groups)
    summary = plan.summary(labels, groups)
    assert sum(summary[s]["recordings"] for s in SPLITS) == 6
    assert sum(summary[s]["samples"] for s in SPLITS) == 6000
    assert all(summary[s]["groups"] == 1 and summary[s]["windows"] == 20 for s in SPLITS)


def test_leakage_check_detects_overlap_and_shared_groups() -> None:
    plan = SplitPlan(
        strategy="block",
        segments=[
            Segment(0, "train", 0, 600),
            Segment(0, "val", 500, 800),
            Segment(1, "train", 0, 100),
            Segment(2, "test", 0, 100),
        ],
        fractions={"train": 0.7, "val": 0.15, "test": 0.15},
        seed=0,
        window=100,
        hop=100,
        gap=100,
    )
    assert plan.check_no_leakage(["g", "h", "h"]) == {
        "passed": False,
        "overlapping_ranges": 1,
        "shared_groups": 2,
    }
    assert plan.check_no_leakage(None)["shared_groups"] == 0


# ------------------------------------------------------------------------------ validation
def _error(**kwargs) -> str:
    with pytest.raises(DataValidationError) as info:
        plan_splits(**kwargs)
    return str(info.value)


BASE = {"window": 100, "hop": 50}


def test_single_class_is_rejected() -> None:
    msg = _error(labels=["a"] * 5, lengths=[1000] * 5, **BASE)
    assert "single class 'a'" in msg


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (1.1, -0.05, -0.05), (0.0, 0.5, 0.5)])
def test_bad_fractions_are_rejected(fractions) -> None:
    msg = _error(labels=["a", "b"] * 3, lengths=[1000] * 6, fractions=fractions, **BASE)
    assert "fractions" in msg and "sum to 1" in msg


def test_recording_shorter_than_window_is_named() -> None:
    msg = _error(labels=["a", "b"] * 3, lengths=[1000] * 5 + [80], **BASE)
    assert "recording #5" in msg and "80 samples" in msg
    msg = _error(labels=["a", "b"], lengths=[1000, 80], relpaths=["a/1.csv", "b/2.csv"], **BASE)
    assert "b/2.csv" in msg and "a/1.csv" not in msg


def test_forced_recording_strategy_names_small_class() -> None:
    msg = _error(labels=["a"] * 3 + ["b"] * 2, lengths=[1000] * 5, strategy="recording", **BASE)
    assert "class 'b'" in msg and "2 recording(s)" in msg and "at least 3" in msg
    assert "class 'a'" not in msg


def test_block_names_short_recording_and_windows_needed() -> None:
    msg = _error(labels=["a", "b"], lengths=[1000, 450], relpaths=["a.csv", "b.csv"], **BASE)
    assert "b.csv" in msg and "class 'b'" in msg and "5 windows" in msg and "500 samples" in msg


def test_partial_explicit_names_missing_rows() -> None:
    msg = _error(
        labels=["a", "b", "a"],
        lengths=[1000] * 3,
        explicit=["train", None, ""],
        relpaths=["x.csv", "y.csv", "z.csv"],
        **BASE,
    )
    assert "y.csv" in msg and "z.csv" in msg and "x.csv" not in msg


def test_explicit_problems() -> None:
    kw = {"lengths": [1000] * 4, "relpaths": ["p.csv", "q.csv", "r.csv", "s.csv"], **BASE}
    msg = _error(labels=["a", "a", "b", "b"], explicit=["train", "val", "tset", "train"], **kw)
    assert "r.csv" in msg and "'tset'" in msg
    msg = _error(labels=["a", "b", "b", "b"], explicit=["val", "train", "val", "test"], **kw)
    assert "class 'a' has no training recording" in msg
    msg = _error(
        labels=["a", "b", "a", "b"],
        explicit=["train", "train", "val", "test"],
        groups=["u1", "u2", "u1", "u3"],
        **kw,
    )
    assert "group 'u1'" in msg and "p.csv" in msg and "r.csv" in msg


def test_group_class_in_too_few_groups() -> None:
    msg = _error(
        labels=["a", "a", "a", "b", "b", "b"],
        lengths=[1000] * 6,
        groups=["u1", "u2", "u3", "u1", "u1", "u2"],
        **BASE,
    )
    assert "class 'b'" in msg and "2 group(s)" in msg and "'u1'" in msg


def test_block_with_groups_is_rejected() -> None:
    msg = _error(
        labels=["a", "b"], lengths=[5000] * 2, groups=["u1", "u2"], strategy="block", **BASE
    )
    assert "block" in msg and "group" in msg


def test_all_problems_reported_together() -> None:
    with pytest.raises(DataValidationError) as info:
        plan_splits(["a"] * 3, [10, 20, 1000], window=100, hop=50, fractions=(0.5, 0.5, 0.5))
    assert len(info.value.problems) == 4
