"""Cross-validation folds over a manifest column: which recordings test, validate and train.

Leave one value out: every value of the column (a speed, a load, a fault size, a rig, a group, or
each recording) is the test of exactly one fold, and never in the training or validation data of
that fold. ``k`` folds put several values into one test instead (values shuffled with the seed).
Validation always comes from the training side of a fold, by one of three rules:

- ``same``: the recordings of another value of the same column (the next one after the test
  value, cyclically): tests whether a model picked on one unseen condition carries to another;
- ``column``: the recordings of one value of another column (``val_by``);
- ``last_block``: the last block of every training recording (manifest split ``train+val``).

A numeric column can be cut into ``bins`` quantile bins first (``drift`` of the built-in data into
two halves). A recording without a value (an empty cell) is on the training side of every fold.
Groups never cross splits: ``by="recording"`` makes each group (or each recording without one)
a value; a column whose values cut a group in two is an error.

Torch-free: the plan is a typed record, written as ``cv_plan.json`` and as one manifest per fold
(the original columns plus ``split``), which the DataModule reads like any manifest.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.discovery import RecordingSpec

ValRule = Literal["same", "column", "last_block"]
VAL_RULES: tuple[str, ...] = ("same", "column", "last_block")
#: ``by`` value that makes every recording (or group) a value of its own.
BY_RECORDING = "recording"
_WHERE = "cv settings"


@dataclass(frozen=True)
class Fold:
    """One fold: its name, the values it tests and validates on, and each recording's split.

    Args:
        name: folder-safe name, e.g. ``rpm=800`` or ``fold-2``.
        test_values: the column values tested.
        val_values: the values validated on (``same``/``column`` rules), empty for ``last_block``.
        splits: split of each recording, in the order of the plan's ``recordings``: ``train``,
            ``val``, ``test`` or ``train+val``.
    """

    name: str
    test_values: tuple[str, ...]
    val_values: tuple[str, ...]
    splits: tuple[str, ...]

    def count(self, split: str) -> int:
        """Recordings whose split is ``split`` (``train+val`` counts for both)."""
        return sum(1 for s in self.splits if s == split or (s == "train+val" and split != "test"))


@dataclass(frozen=True)
class FoldPlan:
    """The folds of one cross-validation and what they were made from.

    Args:
        by: the column the folds leave out (or ``recording``).
        val_rule: how validation data are chosen (see the module docstring).
        val_by: the column of the ``column`` rule.
        k: number of folds when values are grouped, ``None`` for one fold per value.
        bins: quantile bins of a numeric ``by`` column, ``None`` when its values are used as is.
        seed: seed of the ``k``-fold grouping.
        recordings: relative paths of the recordings, the order of every fold's ``splits``.
        labels: class of each recording.
        values: the ``by`` value of each recording (``""``: none, always trains).
        folds: the folds.
    """

    by: str
    val_rule: str
    val_by: str | None
    k: int | None
    bins: int | None
    seed: int
    recordings: tuple[str, ...]
    labels: tuple[str, ...]
    values: tuple[str, ...]
    folds: tuple[Fold, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON values (``cv_plan.json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FoldPlan:
        """Rebuild a plan written by :meth:`to_json`."""
        folds = tuple(
            Fold(
                name=f["name"],
                test_values=tuple(f["test_values"]),
                val_values=tuple(f["val_values"]),
                splits=tuple(f["splits"]),
            )
            for f in data["folds"]
        )
        return cls(
            by=data["by"],
            val_rule=data["val_rule"],
            val_by=data.get("val_by"),
            k=data.get("k"),
            bins=data.get("bins"),
            seed=int(data["seed"]),
            recordings=tuple(data["recordings"]),
            labels=tuple(data["labels"]),
            values=tuple(data["values"]),
            folds=folds,
        )


def column_values(
    specs: Sequence[RecordingSpec], column: str, source: str = "manifest.csv"
) -> list[str]:
    """The value of ``column`` for each recording (``""`` where the cell is empty).

    ``label`` and ``group`` are the manifest's own columns; ``recording`` is each recording's
    group, or its path when it has none.

    Raises:
        DataValidationError: no recording has the column, naming the columns there are.
    """
    if column == BY_RECORDING:
        return [s.group or s.relpath for s in specs]
    if column == "label":
        return [s.label or "" for s in specs]
    if column == "group":
        values = [s.group or "" for s in specs]
    else:
        values = [s.metadata.get(column, "").strip() for s in specs]
    if not any(values):
        known = sorted({"label", "group", BY_RECORDING} | {k for s in specs for k in s.metadata})
        raise DataValidationError(
            Problem(
                source,
                f"column {column!r}",
                f"no recording has a value in this column; columns: {', '.join(known)}",
            )
        )
    return values


def quantile_bins(
    values: Sequence[str], bins: int, column: str, source: str = "manifest.csv"
) -> list[str]:
    """Cut numeric ``values`` into ``bins`` equal-count ranges named ``[lo, hi]``.

    Empty cells stay empty. Ties never straddle a boundary (equal values share a bin), so fewer
    bins than asked are possible; at least two are needed.

    Raises:
        DataValidationError: a non-numeric cell (naming it), or fewer than two distinct bins.
    """
    if bins < 2:
        raise DataValidationError(Problem(_WHERE, "bins", f"need at least 2 bins, got {bins}"))
    numbers: list[float | None] = []
    for v in values:
        if not v:
            numbers.append(None)
            continue
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            raise DataValidationError(
                Problem(source, f"column {column!r}", f"{v!r} is not a finite number")
            )
        numbers.append(x)
    known = np.array(sorted(x for x in numbers if x is not None))
    edges = np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1])
    index = [None if x is None else int(np.searchsorted(edges, x, side="right")) for x in numbers]
    used = sorted({i for i in index if i is not None})
    if len(used) < 2:
        raise DataValidationError(
            Problem(
                source,
                f"column {column!r}",
                f"its values fall into {len(used)} bin; need at least 2 to leave one out",
            )
        )
    names = {}
    for b in used:
        members = [x for x, i in zip(numbers, index, strict=True) if i == b and x is not None]
        names[b] = f"[{min(members):g}, {max(members):g}]"
    return ["" if i is None else names[i] for i in index]


def _sorted_values(values: Sequence[str]) -> list[str]:
    """Distinct non-empty values, numerically when they all are numbers."""
    distinct = sorted({v for v in values if v})

    def number(v: str) -> float | None:
        head = v.strip("[]").split(",")[0]
        try:
            return float(head)
        except ValueError:
            return None

    if all(number(v) is not None for v in distinct):
        return sorted(distinct, key=lambda v: number(v))  # type: ignore[arg-type, return-value]
    return distinct


def _check_groups(
    specs: Sequence[RecordingSpec], values: Sequence[str], column: str, source: str
) -> None:
    by_group: dict[str, set[str]] = defaultdict(set)
    for spec, value in zip(specs, values, strict=True):
        if spec.group:
            by_group[spec.group].add(value)
    split = {g: v for g, v in by_group.items() if len(v) > 1}
    if split:
        shown = "; ".join(f"{g}: {', '.join(sorted(v))}" for g, v in sorted(split.items())[:5])
        raise DataValidationError(
            Problem(
                source,
                f"column {column!r}",
                f"group(s) with more than one value ({shown}): a fold would put one group into "
                "two splits; give a group one value, or leave by 'group'",
            )
        )


def _safe(text: str) -> str:
    text = text.replace(", ", "..").replace("[", "").replace("]", "")
    keep = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
    return keep.strip("_") or "value"


def plan_folds(
    specs: Sequence[RecordingSpec],
    by: str,
    *,
    val_rule: ValRule = "same",
    val_by: str | None = None,
    k: int | None = None,
    bins: int | None = None,
    seed: int = 0,
    source: str = "manifest.csv",
) -> FoldPlan:
    """Leave-one-value-out (or ``k``-fold) folds of ``specs`` over the column ``by``.

    Args:
        specs: the recordings (with labels).
        by: the column left out: any manifest column, ``label``, ``group`` or ``recording``.
        val_rule: ``same``, ``column`` or ``last_block`` (see the module docstring).
        val_by: the column whose values validate (``column`` rule).
        k: group the values into ``k`` folds (shuffled with ``seed``); ``None``: one per value.
        bins: cut a numeric ``by`` column into this many quantile bins first.
        seed: seed of the ``k``-fold shuffle.
        source: the manifest named in errors.

    Raises:
        DataValidationError: unusable settings or data, naming the column, fold or class: fewer
            than two values, a group cut by the column, a fold without validation data, a class
            of a fold's test or validation data that its training data lack.
    """
    if val_rule not in VAL_RULES:
        raise DataValidationError(
            Problem(_WHERE, "val_rule", f"{val_rule!r} is not one of {', '.join(VAL_RULES)}")
        )
    if (val_rule == "column") != (val_by is not None):
        raise DataValidationError(
            Problem(_WHERE, "val_by", "give val_by exactly when val_rule is 'column'")
        )
    labels = [s.label or "" for s in specs]
    values = column_values(specs, by, source)
    if bins is not None:
        values = quantile_bins(values, bins, by, source)
    if by not in (BY_RECORDING, "group"):
        _check_groups(specs, values, by, source)
    distinct = _sorted_values(values)
    if len(distinct) < 2:
        raise DataValidationError(
            Problem(
                source,
                f"column {by!r}",
                f"has {len(distinct)} distinct value(s); leaving one out needs at least 2",
            )
        )
    if k is not None:
        if not 2 <= k <= len(distinct):
            raise DataValidationError(
                Problem(_WHERE, "k", f"need 2 <= k <= {len(distinct)} (values of {by!r}), got {k}")
            )
        order = np.random.default_rng(seed).permutation(len(distinct))
        chunks = [sorted(int(i) for i in part) for part in np.array_split(order, k)]
        tests = [tuple(distinct[i] for i in chunk) for chunk in chunks]
        names = [f"fold-{i + 1}" for i in range(k)]
    else:
        tests = [(v,) for v in distinct]
        names = [_safe(f"{by}={v}") for v in distinct]
    val_values = column_values(specs, val_by, source) if val_by is not None else None
    if val_values is not None:
        _check_groups(specs, val_values, val_by, source)  # type: ignore[arg-type]

    folds = []
    problems: list[Problem] = []
    for i, (name, test) in enumerate(zip(names, tests, strict=True)):
        in_test = [v in test for v in values]
        if val_rule == "same":
            if len(tests) < 3:
                raise DataValidationError(
                    Problem(
                        _WHERE,
                        "val_rule",
                        f"'same' validates on another value of {by!r}, which leaves training "
                        f"data only with 3 or more folds ({len(tests)} here); use "
                        "--cv.val_rule last_block or column",
                    )
                )
            val = tests[(i + 1) % len(tests)]
            in_val = [v in val for v in values]
        elif val_rule == "column":
            assert val_values is not None
            side = sorted({vv for vv, t in zip(val_values, in_test, strict=True) if not t and vv})
            if len(side) < 2:
                problems.append(
                    Problem(
                        _WHERE,
                        f"fold {name}",
                        f"the training side has {len(side)} value(s) of {val_by!r}; validating on "
                        "one needs another to train on",
                    )
                )
                continue
            val = (_sorted_values(side)[i % len(side)],)
            in_val = [vv in val and not t for vv, t in zip(val_values, in_test, strict=True)]
        else:
            val = ()
            in_val = [False] * len(values)
        if val_rule == "last_block":
            splits = ["test" if t else "train+val" for t in in_test]
        else:
            splits = [
                "test" if t else "val" if v else "train"
                for t, v in zip(in_test, in_val, strict=True)
            ]
        problems += _fold_class_problems(name, labels, splits)
        folds.append(Fold(name, tuple(test), tuple(val), tuple(splits)))
    if problems:
        raise DataValidationError(problems)
    return FoldPlan(
        by=by,
        val_rule=val_rule,
        val_by=val_by,
        k=k,
        bins=bins,
        seed=int(seed),
        recordings=tuple(s.relpath for s in specs),
        labels=tuple(labels),
        values=tuple(values),
        folds=tuple(folds),
    )


def _fold_class_problems(name: str, labels: Sequence[str], splits: Sequence[str]) -> list[Problem]:
    trained = {lab for lab, s in zip(labels, splits, strict=True) if s in ("train", "train+val")}
    problems = []
    if "val" not in splits and "train+val" not in splits:
        problems.append(Problem(_WHERE, f"fold {name}", "has no validation recording"))
    for split in ("test", "val"):
        missing = sorted(
            {lab for lab, s in zip(labels, splits, strict=True) if s == split} - trained
        )
        if missing:
            problems.append(
                Problem(
                    _WHERE,
                    f"fold {name}",
                    f"class(es) {', '.join(repr(m) for m in missing)} of its {split} data have "
                    "no training recording in this fold, so the model cannot learn them",
                )
            )
    return problems


def fold_manifest(header: Sequence[str], rows: Sequence[dict[str, str]], fold: Fold) -> str:
    """The manifest of one fold: the original rows and columns, with ``split`` set.

    Args:
        header: the columns of the original manifest (``split`` is added or replaced).
        rows: one mapping per recording, in the plan's order.
        fold: the fold.
    """
    columns = [c for c in header if c != "split"] + ["split"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row, split in zip(rows, fold.splits, strict=True):
        writer.writerow({**row, "split": split})
    return buffer.getvalue()


def manifest_rows(specs: Sequence[RecordingSpec]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a manifest listing ``specs`` (paths relative to their data folder)."""
    extra: list[str] = []
    for spec in specs:
        extra += [k for k in spec.metadata if k not in extra]
    header = ["path", "label", "group", *extra]
    if any(spec.sample_rate for spec in specs) and "sample_rate" not in header:
        header.append("sample_rate")
    rows = []
    for spec in specs:
        row = {"path": spec.relpath, "label": spec.label or "", "group": spec.group or ""}
        row.update(spec.metadata)
        if spec.sample_rate:
            row["sample_rate"] = repr(float(spec.sample_rate))
        rows.append(row)
    return header, rows
