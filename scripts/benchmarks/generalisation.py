"""Generalisation targets of issue 10: cross-validation, the test condition never trained on.

Three protocols, each one ``python -m damage_lightning cv`` run (its per-fold table lands in the
cv folder; one record per fold and one for the mean here):

- ``cwru_fault_size``: ``../shared/data/cwru_0hp_10class``, the nine fault recordings, classes =
  fault type (inner race, ball, outer race), leave one fault size out (0.007, 0.014, 0.021 in);
  validation on another size. Target: mean window accuracy >= 0.90.
- ``uestc_speed``: ``../shared/data/uestc_bearing_part1``, 4 classes, leave one shaft speed out,
  validation on another speed (the dataset README's protocol). Target: every fold >= 0.97.
- ``builtin_drift``: the built-in shear frame, its ``drift`` column (the temperature-like global
  stiffness drift) cut into halves; train and validate on one half (last block of each training
  recording validates), test on the other. Target: >= 0.95 in both directions.

The model config is ``--cv-config`` (default: the recommended ``configs/bearing.yaml`` for the
bearing sets, ``configs/cnn.yaml`` for the frame). For the bearing sets it comes after
``configs/cwru.yaml`` (the data source: sample rate, channels, block splits), so its front end
wins, and before the protocol's own data options (folder, manifest, channel). The standard
library only at the top; the package is imported inside.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Recorder

SHARED = REPO.parent / "shared" / "data"
CWRU = SHARED / "cwru_0hp_10class"
UESTC = SHARED / "uestc_bearing_part1"
FAULT_TYPES = ("inner_race", "ball", "outer_race")


def cwru_fault_size_manifest(cwru_dir: Path, out: Path) -> Path:
    """A manifest of the nine CWRU fault recordings: label = fault type, column ``fault_size``.

    Paths stay relative to ``cwru_dir`` (pass it as ``--data.data_dir``); the manifest itself
    can live anywhere (``--data.manifest``). The normal recording is left out: it has no fault
    size, and the protocol asks which fault a bearing has, not whether it has one.

    Args:
        cwru_dir: the CWRU folder with its ``manifest.csv``.
        out: the manifest to write.
    """
    with (cwru_dir / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "fault_size", "condition", "rpm", "load_hp"])
    for row in rows:
        kind, _, size = row["label"].rpartition("_")
        if kind not in FAULT_TYPES:
            continue
        inches = f"0.{size}"
        writer.writerow([row["path"], kind, inches, row["label"], row["rpm"], row["load_hp"]])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(buffer.getvalue())
    return out


@dataclass(frozen=True)
class Protocol:
    """One cross-validation protocol: its data options, the column left out and its target."""

    name: str
    data_args: Callable[[Path], list[str]]
    cv_args: list[str]
    target: float
    rule: str
    met: Callable[[list[float]], bool]
    needs: Path | None = None
    config: str = "configs/bearing.yaml"
    #: the data source's config, given before the model config (which sets the front end)
    base: str | None = "configs/cwru.yaml"
    extra: list[str] = field(default_factory=list)


def _cwru_args(workdir: Path) -> list[str]:
    manifest = cwru_fault_size_manifest(CWRU, workdir / "cwru_fault_size.csv")
    return [
        "--data.data_dir",
        str(CWRU),
        "--data.manifest",
        str(manifest),
    ]


def _uestc_args(workdir: Path) -> list[str]:
    return [
        "--data.data_dir",
        str(UESTC),
        "--data.sample_rate",
        "20000",
        "--data.channels",
        "[accel]",
        "--data.f_max",
        "null",
    ]


PROTOCOLS = {
    "cwru_fault_size": Protocol(
        name="cwru_fault_size",
        data_args=_cwru_args,
        cv_args=["--cv.by", "fault_size", "--cv.val_rule", "last_block"],
        target=0.90,
        rule="mean window accuracy over the folds",
        met=lambda accs: sum(accs) / len(accs) >= 0.90,
        needs=CWRU,
    ),
    "uestc_speed": Protocol(
        name="uestc_speed",
        data_args=_uestc_args,
        cv_args=["--cv.by", "rpm"],
        target=0.97,
        rule="every fold's window accuracy",
        met=lambda accs: min(accs) >= 0.97,
        needs=UESTC,
    ),
    "builtin_drift": Protocol(
        name="builtin_drift",
        data_args=lambda workdir: [],
        cv_args=["--cv.by", "drift", "--cv.bins", "2", "--cv.val_rule", "last_block"],
        target=0.95,
        rule="every fold's window accuracy (both directions)",
        met=lambda accs: min(accs) >= 0.95,
        config="configs/cnn.yaml",
        base=None,
    ),
}


def bench_generalisation(
    rec: Recorder,
    workdir: Path,
    names: Sequence[str] = tuple(PROTOCOLS),
    config: str | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Run each protocol's cv and record every fold's window accuracy against the target.

    Args:
        rec: the benchmark's recorder.
        workdir: where the cv folders and the CWRU manifest go.
        names: protocols to run (keys of :data:`PROTOCOLS`).
        config: model config to use instead of each protocol's own.
        extra: more fit options for every protocol (``--trainer.max_epochs 20``).
    """
    from damage_lightning.cv import main_cv

    results: dict[str, Any] = {}
    for name in names:
        protocol = PROTOCOLS[name]
        if protocol.needs is not None and not protocol.needs.is_dir():
            rec.skipped(f"cv_{name}", f"{protocol.needs} is absent")
            continue
        model_config = str(REPO / (config or protocol.config))
        base = [] if protocol.base is None else ["--config", str(REPO / protocol.base)]
        args = [
            *base,
            "--config",
            model_config,
            *protocol.data_args(workdir),
            *extra,
            "--trainer.default_root_dir",
            str(workdir),
            "--report.enabled",
            "false",
            *protocol.cv_args,
            "--cv.name",
            f"cv-{name}",
        ]
        started = time.perf_counter()
        main_cv(args)
        wall = time.perf_counter() - started
        document = json.loads((workdir / f"cv-{name}" / "cv_results.json").read_text())
        accs = [f["window_accuracy"] for f in document["folds"]]
        params = {
            "config": model_config,
            "extra": list(extra),
            "wall_s": round(wall, 1),
            "rule": protocol.rule,
        }
        for fold in document["folds"]:
            rec.emit(
                f"cv_{name}_{fold['fold']}",
                fold["window_accuracy"],
                "accuracy",
                {
                    **params,
                    "recording_accuracy": fold["recording_accuracy"],
                    "baseline_window_accuracy": fold["baseline_window_accuracy"],
                },
            )
        rec.emit(
            f"cv_{name}",
            min(accs) if protocol.rule.startswith("every") else sum(accs) / len(accs),
            "accuracy",
            params,
            target=protocol.target,
            met=protocol.met(accs),
        )
        results[name] = document
    return results
