"""Leakage-free assignment of recordings, or sample ranges of recordings, to train/val/test.

A plan is a list of segments ``(recording, split, start, stop)``; windows are cut later, only
inside segments, so no sample of a recording (and, with groups, no group) reaches two splits.

Strategies (``strategy="auto"`` picks the first that applies):

* ``explicit``: the manifest gives every recording its split. Giving a split to only some
  recordings is an error that names the rows without one (mixing hand-picked and random
  assignment would silently change the fractions).
* ``group``: whole groups (physical units, test runs) go to one split. Groups may hold several
  classes; they are assigned greedily, largest first, to bring every class's share of windows per
  split close to the fractions, after first giving every class one group in each split.
  Recordings without a group are groups of their own.
* ``recording``: whole recordings, stratified by class (seeded); every class (it needs at least
  3 recordings) gets at least one recording in each split: val and test get their rounded share,
  train the rest.
* ``block``: chosen when some class has fewer than 3 recordings. Each recording is cut into three
  contiguous blocks, one per split, in an order drawn at random per recording (so the test block
  is not always at the end of the record), separated by gaps of one window (``gap = window``).
  Each block holds at least one window; the rest of the recording is shared in proportion to the
  fractions, so window counts per split follow the fractions closely.

A val or test fraction of 0 means that split stays empty; "each split" above then means each
split with a positive fraction (and 2 recordings per class suffice for ``recording``).

This module does not import torch, so validation is fast.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.windows import count_windows

SPLITS: tuple[str, str, str] = ("train", "val", "test")
STRATEGIES = ("explicit", "group", "recording", "block")
#: A manifest ``split`` value: the recording trains, except its last block, which validates.
TRAIN_VAL = "train+val"
_GROUP_ATTEMPTS = 50  # seeded restarts of the group coverage step before giving up
_SETTINGS = "split settings"  # the "file" named by problems that come from configuration


@dataclass(frozen=True)
class Segment:
    """A contiguous sample range of one recording assigned to one split.

    Args:
        recording: index into the recordings list.
        split: ``"train"``, ``"val"`` or ``"test"``.
        start: first sample (inclusive).
        stop: end sample (exclusive).
    """

    recording: int
    split: str
    start: int
    stop: int


@dataclass
class SplitPlan:
    """Which sample ranges of which recordings belong to which split.

    Args:
        strategy: ``"explicit"``, ``"group"``, ``"recording"`` or ``"block"``.
        segments: the assignment, sorted by recording and start.
        fractions: the requested fractions per split.
        seed: seed of the random assignment.
        window: window length in samples the plan was made for.
        hop: hop between windows in samples.
        gap: samples left out between blocks of different splits (``block``), else 0.
    """

    strategy: str
    segments: list[Segment]
    fractions: dict[str, float]
    seed: int
    window: int
    hop: int
    gap: int

    def segments_for(self, split: str) -> list[Segment]:
        """Segments of one split, sorted by recording and start.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        chosen = [s for s in self.segments if s.split == split]
        return sorted(chosen, key=lambda s: (s.recording, s.start))

    def to_json(
        self,
        relpaths: list[str],
        labels: list[str],
        groups: list[str | None],
        lengths: list[int],
    ) -> dict[str, Any]:
        """The plan as the ``splits.json`` document (see docs/architecture.md).

        Args:
            relpaths: path of each recording, relative to the data folder.
            labels: class label of each recording.
            groups: group of each recording (``None`` when none).
            lengths: samples in each recording.
        """
        by_recording: dict[int, list[Segment]] = defaultdict(list)
        for seg in self.segments:
            by_recording[seg.recording].append(seg)
        recordings = []
        for i, path in enumerate(relpaths):
            segs = sorted(by_recording.get(i, []), key=lambda s: s.start)
            recordings.append(
                {
                    "path": path,
                    "label": labels[i],
                    "group": groups[i],
                    "n_samples": int(lengths[i]),
                    "segments": [
                        {"split": s.split, "start": int(s.start), "stop": int(s.stop)} for s in segs
                    ],
                }
            )
        return {
            "strategy": self.strategy,
            "seed": int(self.seed),
            "fractions": {k: float(v) for k, v in self.fractions.items()},
            "window": int(self.window),
            "hop": int(self.hop),
            "gap_samples": int(self.gap),
            "recordings": recordings,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitPlan:
        """Rebuild a plan from a ``splits.json`` document written by :meth:`to_json`.

        Args:
            data: the parsed JSON document.
        """
        segments = [
            Segment(i, s["split"], int(s["start"]), int(s["stop"]))
            for i, rec in enumerate(data["recordings"])
            for s in rec["segments"]
        ]
        return cls(
            strategy=data["strategy"],
            segments=segments,
            fractions={k: float(v) for k, v in data["fractions"].items()},
            seed=int(data["seed"]),
            window=int(data["window"]),
            hop=int(data["hop"]),
            gap=int(data["gap_samples"]),
        )

    def summary(self, labels: list[str], groups: list[str | None] | None = None) -> dict[str, Any]:
        """Per split: recordings, groups, samples and windows, for ``model_info.json``.

        A recording without a group counts as a group of its own.

        Args:
            labels: class label of each recording (sets the number of recordings).
            groups: group of each recording, or ``None`` when there are no groups.
        """
        keys = _group_keys(len(labels), groups)
        out: dict[str, Any] = {}
        for split in SPLITS:
            segs = self.segments_for(split)
            out[split] = {
                "recordings": len({s.recording for s in segs}),
                "groups": len({keys[s.recording] for s in segs}),
                "samples": int(sum(s.stop - s.start for s in segs)),
                "windows": int(
                    sum(count_windows(s.stop - s.start, self.window, self.hop) for s in segs)
                ),
            }
        return out

    def check_no_leakage(self, groups: list[str | None] | None = None) -> dict[str, Any]:
        """Verify the plan independently of how it was made.

        Counts pairs of segments of one recording in different splits whose sample ranges overlap,
        and groups (named groups only) whose recordings appear in more than one split.

        Args:
            groups: group of each recording, or ``None`` when there are no groups.

        Returns:
            ``{"passed": bool, "overlapping_ranges": int, "shared_groups": int}``.
        """
        by_recording: dict[int, list[Segment]] = defaultdict(list)
        for seg in self.segments:
            by_recording[seg.recording].append(seg)
        overlapping = 0
        for segs in by_recording.values():
            segs = sorted(segs, key=lambda s: s.start)
            for i, a in enumerate(segs):
                for b in segs[i + 1 :]:
                    if b.start >= a.stop:
                        break
                    if b.split != a.split and min(a.stop, b.stop) > max(a.start, b.start):
                        overlapping += 1
        shared = 0
        if groups is not None:
            splits_of_group: dict[str, set[str]] = defaultdict(set)
            for seg in self.segments:
                group = groups[seg.recording]
                if group is not None:
                    splits_of_group[group].add(seg.split)
            shared = sum(1 for s in splits_of_group.values() if len(s) > 1)
        return {
            "passed": overlapping == 0 and shared == 0,
            "overlapping_ranges": overlapping,
            "shared_groups": shared,
        }


def plan_splits(
    labels: list[str],
    lengths: list[int],
    window: int,
    hop: int,
    groups: list[str | None] | None = None,
    explicit: list[str | None] | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    strategy: Literal["auto", "explicit", "group", "recording", "block"] = "auto",
    relpaths: list[str] | None = None,
    min_classes: int = 2,
) -> SplitPlan:
    """Assign recordings (or blocks of them) to train/val/test without leakage.

    See the module docstring for the strategies. The result depends only on the inputs and the
    seed.

    Args:
        labels: class label of each recording.
        lengths: samples in each recording.
        window: window length in samples.
        hop: hop between windows in samples.
        groups: group of each recording (``None`` entries: a group of its own); ``None`` for none.
        explicit: split of each recording from the manifest (``"train"``, ``"val"``, ``"test"``,
            or ``None``/empty when not given); ``None`` when the manifest has no split column.
        fractions: train, val and test fractions; positive, summing to 1.
        seed: seed of the random assignment.
        strategy: ``"auto"`` or one strategy to force.
        relpaths: recording paths used in error messages (``"recording #i"`` otherwise).
        min_classes: fewest classes accepted: 2 for a classifier, 1 for the healthy recordings a
            novelty detector trains on.

    Raises:
        DataValidationError: when the data cannot be split as asked; every problem found is
            listed, naming the recordings or classes concerned.
    """
    n = len(labels)
    if len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} labels")
    for name, seq in (("groups", groups), ("explicit", explicit), ("relpaths", relpaths)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {name} for {n} labels")
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; expected auto or {STRATEGIES}")
    names = list(relpaths) if relpaths is not None else [f"recording #{i}" for i in range(n)]
    lengths = [int(x) for x in lengths]
    groups = _clean_optional(groups)
    explicit = _clean_optional(explicit)
    if groups is not None and all(g is None for g in groups):
        groups = None
    if explicit is not None and all(e is None for e in explicit):
        explicit = None

    problems = _check_common(labels, lengths, window, fractions, names, min_classes)
    if problems:
        raise DataValidationError(problems)
    fracs = dict(zip(SPLITS, (float(f) for f in fractions), strict=True))

    if strategy == "auto":
        if explicit is not None:
            strategy = "explicit"
        elif groups is not None:
            strategy = "group"
        elif min(_count_by_class(labels).values()) >= len(_active(fracs)):
            strategy = "recording"
        else:
            strategy = "block"

    rng = np.random.default_rng(seed)
    if strategy == "explicit":
        segments = _plan_explicit(labels, lengths, window, explicit, groups, fracs, names)
    elif strategy == "group":
        segments = _plan_groups(labels, lengths, window, hop, groups, fracs, rng, names)
    elif strategy == "recording":
        segments = _plan_recordings(labels, lengths, fracs, rng)
    else:
        segments = _plan_blocks(labels, lengths, window, groups, fracs, rng, names)
    segments.sort(key=lambda s: (s.recording, s.start))
    return SplitPlan(
        strategy=strategy,
        segments=segments,
        fractions=fracs,
        seed=int(seed),
        window=int(window),
        hop=int(hop),
        gap=int(window) if strategy == "block" else 0,
    )


def _clean_optional(values: list[Any] | None) -> list[Any] | None:
    """Map empty strings and NaN (as read from an empty CSV cell) to ``None``; strip strings."""
    if values is None:
        return None
    out: list[Any] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        else:
            text = str(v).strip()
            out.append(text if text else None)
    return out


def _group_keys(n: int, groups: list[str | None] | None) -> list[tuple[str, Any]]:
    """A hashable group key per recording; recordings without a group are their own group."""
    if groups is None:
        return [("recording", i) for i in range(n)]
    return [("group", g) if g is not None else ("recording", i) for i, g in enumerate(groups)]


def _active(fracs: dict[str, float]) -> list[str]:
    """Splits with a positive fraction: the ones that must receive windows of every class."""
    return [s for s in SPLITS if fracs[s] > 0]


def _count_by_class(labels: list[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    return dict(counts)


def _check_common(
    labels: list[str],
    lengths: list[int],
    window: int,
    fractions: tuple[float, float, float],
    names: list[str],
    min_classes: int = 2,
) -> list[Problem]:
    """Problems that rule out any split: fractions, classes, recordings shorter than a window."""
    problems = []
    fr = list(fractions)
    if len(fr) != 3:
        problems.append(
            Problem(_SETTINGS, "fractions", f"give three fractions (train, val, test), got {fr}")
        )
    elif any(not math.isfinite(f) or f < 0 for f in fr) or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        problems.append(
            Problem(
                _SETTINGS,
                "fractions",
                f"train, val and test fractions must sum to 1, with train positive and val and "
                f"test positive or zero (zero: no such split), got {fr} (sum {sum(fr):g})",
            )
        )
    if not labels:
        problems.append(Problem(_SETTINGS, "", "there are no recordings to split"))
        return problems
    classes = sorted(set(labels))
    if len(classes) < min_classes:
        problems.append(
            Problem(
                _SETTINGS,
                "",
                f"all {len(labels)} recordings belong to the single class {classes[0]!r}; a "
                "classifier needs recordings of at least two classes",
            )
        )
    for i, length in enumerate(lengths):
        if length < window:
            problems.append(
                Problem(
                    names[i],
                    "",
                    f"has {length} samples, fewer than one window of {window}; drop it or use a "
                    "shorter window",
                )
            )
    return problems


def _plan_explicit(
    labels: list[str],
    lengths: list[int],
    window: int,
    explicit: list[str | None] | None,
    groups: list[str | None] | None,
    fracs: dict[str, float],
    names: list[str],
) -> list[Segment]:
    if explicit is None:
        raise DataValidationError(
            Problem(_SETTINGS, "strategy", "the 'explicit' strategy needs a manifest split column")
        )
    aliases = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
    problems = []
    missing = [names[i] for i, e in enumerate(explicit) if e is None]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        shown = ", ".join(missing[:10]) + more
        problems.append(
            Problem(
                "manifest.csv",
                "column 'split'",
                f"{len(missing)} recording(s) have no split: {shown}; give every recording a "
                "split (train, val or test) or leave the column out",
            )
        )
    splits: list[str] = []
    for i, e in enumerate(explicit):
        if e is None:
            splits.append("")
            continue
        value = aliases.get(e.lower(), e.lower())
        if value not in (*SPLITS, TRAIN_VAL):
            problems.append(
                Problem(
                    names[i],
                    "column 'split'",
                    f"unknown split {e!r}; use train, val, test or {TRAIN_VAL}",
                )
            )
        splits.append(value)
    if problems:
        raise DataValidationError(problems)
    covered = {part for s in splits for part in (s.split("+") if s == TRAIN_VAL else [s])}
    for split in _active(fracs):
        if split not in covered:
            problems.append(
                Problem("manifest.csv", "column 'split'", f"no recording is assigned to {split!r}")
            )
    for label in sorted(set(labels)):
        if not any(
            s in ("train", TRAIN_VAL) and lab == label
            for s, lab in zip(splits, labels, strict=True)
        ):
            problems.append(
                Problem(
                    "manifest.csv",
                    "column 'split'",
                    f"class {label!r} has no training recording, so the model cannot learn it",
                )
            )
    if groups is not None:
        split_of_group: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for i, g in enumerate(groups):
            if g is not None:
                # A train+val recording is on the training side, like a training one.
                side = "train" if splits[i] == TRAIN_VAL else splits[i]
                split_of_group[g][side].append(names[i])
        for g, by_split in sorted(split_of_group.items()):
            if len(by_split) > 1:
                where = "; ".join(f"{s}: {', '.join(v[:3])}" for s, v in sorted(by_split.items()))
                problems.append(
                    Problem(
                        "manifest.csv",
                        "column 'split'",
                        f"group {g!r} has recordings in more than one split ({where}); a group "
                        "must stay in one split",
                    )
                )
    if problems:
        raise DataValidationError(problems)
    return _explicit_segments(splits, lengths, window, fracs, names)


def _explicit_segments(
    splits: list[str],
    lengths: list[int],
    window: int,
    fracs: dict[str, float],
    names: list[str],
) -> list[Segment]:
    """Whole recordings, and ``train+val`` ones cut into a training head and a validation tail.

    The tail is the last ``val / (train + val)`` share of the recording (the validation share of
    the training side), at least one window; a gap of one window separates it from the head.
    """
    share = fracs["val"] / (fracs["train"] + fracs["val"]) if fracs["val"] > 0 else 0.0
    segments: list[Segment] = []
    problems = []
    for i, split in enumerate(splits):
        if split != TRAIN_VAL:
            segments.append(Segment(i, split, 0, lengths[i]))
            continue
        if share == 0.0:
            problems.append(
                Problem(
                    names[i],
                    "column 'split'",
                    "'train+val' needs a validation split, but val_fraction is 0",
                )
            )
            continue
        need = 3 * window
        if lengths[i] < need:
            problems.append(
                Problem(
                    names[i],
                    "column 'split'",
                    f"has {lengths[i]} samples; a training head and a validation tail with a "
                    f"one-window gap need at least {need} ({window}-sample windows)",
                )
            )
            continue
        tail = min(max(window, round(share * lengths[i])), lengths[i] - 2 * window)
        cut = lengths[i] - tail
        segments.append(Segment(i, "train", 0, cut - window))
        segments.append(Segment(i, "val", cut, lengths[i]))
    if problems:
        raise DataValidationError(problems)
    return segments


def _split_counts(n: int, fracs: dict[str, float]) -> dict[str, int]:
    """Recordings per split for a class of ``n`` (at least one per active split).

    Val and test get their rounded share (at least 1 when their fraction is positive), train the
    rest.
    """
    n_val = max(1, round(fracs["val"] * n)) if fracs["val"] > 0 else 0
    n_test = max(1, round(fracs["test"] * n)) if fracs["test"] > 0 else 0
    while n_val + n_test > n - 1:
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _plan_recordings(
    labels: list[str],
    lengths: list[int],
    fracs: dict[str, float],
    rng: np.random.Generator,
) -> list[Segment]:
    active = _active(fracs)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    problems = [
        Problem(
            _SETTINGS,
            f"class {label!r}",
            f"has {len(idx)} recording(s); splitting by recording needs at least {len(active)} "
            f"per class (one each for {_names(active)}); add recordings or use the 'block' "
            "strategy",
        )
        for label, idx in sorted(by_class.items())
        if len(idx) < len(active)
    ]
    if problems:
        raise DataValidationError(problems)
    segments = []
    for label in sorted(by_class):
        idx = by_class[label]
        order = [idx[k] for k in rng.permutation(len(idx))]
        counts = _split_counts(len(idx), fracs)
        pos = 0
        for split in SPLITS:
            for i in order[pos : pos + counts[split]]:
                segments.append(Segment(i, split, 0, lengths[i]))
            pos += counts[split]
    return segments


def _plan_blocks(
    labels: list[str],
    lengths: list[int],
    window: int,
    groups: list[str | None] | None,
    fracs: dict[str, float],
    rng: np.random.Generator,
    names: list[str],
) -> list[Segment]:
    if groups is not None:
        raise DataValidationError(
            Problem(
                _SETTINGS,
                "strategy",
                "the 'block' strategy puts parts of every recording into every split, which "
                "breaks the groups given in the manifest; use the 'group' strategy, or leave the "
                "group column out",
            )
        )
    active = _active(fracs)
    gap = window
    need = len(active) * window + (len(active) - 1) * gap
    problems = []
    for i, length in enumerate(lengths):
        if length < need:
            problems.append(
                Problem(
                    names[i],
                    f"class {labels[i]!r}",
                    f"has {length} samples; cutting it into {_names(active)} blocks needs at "
                    f"least {need} samples ({need // window} windows of {window}: one per split "
                    f"plus a gap of one window between blocks); add recordings ({len(active)} per "
                    f"class allow splitting by recording) or use a shorter window",
                )
            )
    if problems:
        raise DataValidationError(problems)
    segments = []
    for i, length in enumerate(lengths):
        # Every block gets one window; the rest of the record is shared by the fractions.
        spare = length - need
        sizes = {s: window + math.floor(fracs[s] * spare) for s in active}
        sizes["train"] += length - (len(active) - 1) * gap - sum(sizes.values())
        pos = 0
        for k, j in enumerate(rng.permutation(len(active))):
            split = active[int(j)]
            if k:
                pos += gap
            segments.append(Segment(i, split, pos, pos + sizes[split]))
            pos += sizes[split]
    return segments


def _plan_groups(
    labels: list[str],
    lengths: list[int],
    window: int,
    hop: int,
    groups: list[str | None] | None,
    fracs: dict[str, float],
    rng: np.random.Generator,
    names: list[str],
) -> list[Segment]:
    if groups is None:
        raise DataValidationError(
            Problem(_SETTINGS, "strategy", "strategy 'group' needs a group column in the manifest")
        )
    active = [SPLITS.index(s) for s in _active(fracs)]
    keys = _group_keys(len(labels), groups)
    key_list = sorted(set(keys), key=lambda k: (k[0], str(k[1])))
    key_pos = {k: j for j, k in enumerate(key_list)}
    classes = sorted(set(labels))
    class_pos = {c: j for j, c in enumerate(classes)}
    # Windows per (group, class): the quantity whose split shares should follow the fractions.
    weight = np.zeros((len(key_list), len(classes)))
    members: list[list[int]] = [[] for _ in key_list]
    for i, key in enumerate(keys):
        g = key_pos[key]
        members[g].append(i)
        weight[g, class_pos[labels[i]]] += count_windows(lengths[i], window, hop)
    present = weight > 0

    problems = []
    for c, label in enumerate(classes):
        n_groups = int(present[:, c].sum())
        if n_groups < len(active):
            held = ", ".join(_key_name(key_list[g], names) for g in np.flatnonzero(present[:, c]))
            problems.append(
                Problem(
                    _SETTINGS,
                    f"class {label!r}",
                    f"occurs in {n_groups} group(s) ({held}); splitting by group needs at least "
                    f"{len(active)} groups per class (one each for "
                    f"{_names(_active(fracs))}); add recordings from more groups, or leave the "
                    "group column out",
                )
            )
    if problems:
        raise DataValidationError(problems)

    assignment = None
    for _ in range(_GROUP_ATTEMPTS):
        assignment = _cover_classes(present, active, rng)
        if assignment is not None:
            break
    if assignment is None:
        raise DataValidationError(
            Problem(
                _SETTINGS,
                "column 'group'",
                f"cannot place the groups so that every class has a group in each of "
                f"{_names(_active(fracs))} (groups share classes in a way that leaves no "
                "choice); add groups or leave the group column out",
            )
        )

    totals = weight.sum(axis=0)
    target = np.outer(np.array([fracs[s] for s in SPLITS]), totals)  # (split, class)
    assigned = np.zeros_like(target)
    for g, s in assignment.items():
        assigned[s] += weight[g]
    rest = [int(g) for g in rng.permutation(len(key_list)) if int(g) not in assignment]
    # Largest groups first: the small ones then fill the remaining gaps more precisely.
    rest.sort(key=lambda g: -weight[g].sum())
    for g in rest:
        best_s, best_cost = active[0], math.inf
        for s in active:
            trial = assigned.copy()
            trial[s] += weight[g]
            cost = float((((trial - target) / totals) ** 2).sum())
            if cost < best_cost - 1e-12:
                best_s, best_cost = s, cost
        assignment[g] = best_s
        assigned[best_s] += weight[g]

    return [Segment(i, SPLITS[s], 0, lengths[i]) for g, s in assignment.items() for i in members[g]]


def _cover_classes(
    present: np.ndarray, active: list[int], rng: np.random.Generator
) -> dict[int, int] | None:
    """Give every class one group in each active split; ``None`` when this attempt gets stuck."""
    n_classes = present.shape[1]
    assignment: dict[int, int] = {}
    covered = np.zeros((3, n_classes), dtype=bool)
    # Classes with the fewest groups have the least choice, so they choose first.
    tie = rng.random(n_classes)
    for c in sorted(range(n_classes), key=lambda c: (present[:, c].sum(), tie[c])):
        for s in rng.permutation(active):
            if covered[s, c]:
                continue
            free = [int(g) for g in np.flatnonzero(present[:, c]) if int(g) not in assignment]
            if not free:
                return None
            # Prefer groups holding few classes: they constrain the other classes least.
            n_cls = present[free].sum(axis=1)
            best = [g for g, k in zip(free, n_cls, strict=True) if k == n_cls.min()]
            g = best[int(rng.integers(len(best)))]
            assignment[g] = int(s)
            covered[s] |= present[g]
    return assignment


def _names(splits: list[str]) -> str:
    """``"train, val and test"``."""
    return splits[0] if len(splits) == 1 else ", ".join(splits[:-1]) + " and " + splits[-1]


def _key_name(key: tuple[str, Any], names: list[str]) -> str:
    kind, value = key
    return f"group {value!r}" if kind == "group" else names[value]
