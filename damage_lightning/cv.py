"""Cross-validation over a manifest column: ``python -m damage_lightning cv --cv.by COLUMN``.

Each fold of :func:`damage_lightning.evaluation.folds.plan_folds` is one ordinary ``fit`` (train,
validate, calibrate, test, export, report) in its own run folder, on a manifest that is the data's
own with a ``split`` column set for the fold. The cv folder
``<trainer.default_root_dir>/<cv.name>/`` holds::

    cv_plan.json         the folds: which recording tests, validates and trains in each
    manifests/<fold>.csv the manifest each fold's fit read
    folds/<fold>/        the fold's run folder, and fold_result.json once it is complete
    cv_results.csv       one row per fold, then mean and sd rows
    cv_results.json      the same, with the settings, the baseline and the chance level
    cv_summary.png       per-fold accuracy of the model, the baseline and chance
    cv_report.pdf        a short PDF of the table and the figure

A rerun of the same command skips the folds that have a ``fold_result.json``, resumes a fold
whose run folder holds ``checkpoints/last.ckpt`` and restarts one that holds nothing to resume
from. Beside each fold's model, the trivial baseline (:mod:`damage_lightning.evaluation.baseline`)
is scored on the same windows.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from damage_lightning.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from damage_lightning.card import MODEL_CARD_FILE, JsonRecord, ModelCard
from damage_lightning.errors import DataValidationError, OutputLocationError, Problem
from damage_lightning.evaluation.folds import (
    VAL_RULES,
    Fold,
    FoldPlan,
    fold_manifest,
    manifest_rows,
    plan_folds,
)

PLAN_FILE = "cv_plan.json"
RESULTS_CSV = "cv_results.csv"
RESULTS_JSON = "cv_results.json"
SUMMARY_PNG = "cv_summary.png"
REPORT_PDF = "cv_report.pdf"
FOLD_RESULT = "fold_result.json"
#: The per-fold figures averaged in the summary (model, then baseline).
METRICS = (
    "window_accuracy",
    "window_f1_macro",
    "recording_accuracy",
    "recording_f1_macro",
    "baseline_window_accuracy",
    "baseline_window_f1_macro",
    "baseline_recording_accuracy",
    "baseline_recording_f1_macro",
    "chance_majority",
)


@dataclass(frozen=True)
class CVSettings:
    """The ``--cv.*`` options.

    Args:
        by: manifest column left out one value at a time (``rpm``, ``load_hp``, ``group``, a
            fault-size column, ...), or ``recording`` (each recording, or each group).
        val_rule: where each fold validates: ``same`` (another value of ``by``), ``column``
            (a value of ``val_by``) or ``last_block`` (the last block of each training
            recording). Never the test value.
        val_by: the column of ``val_rule: column``.
        k: group the values into ``k`` folds instead of one fold per value.
        bins: cut a numeric ``by`` column into this many quantile bins first.
        seed: seed of the ``k``-fold grouping.
        name: the cv folder's name under ``trainer.default_root_dir`` (default ``cv-<by>``);
            rerunning with the same name resumes.
        baseline: score the log-Welch PSD nearest-centroid baseline on every fold.
        report: write ``cv_summary.png`` and ``cv_report.pdf``.
    """

    by: str
    val_rule: str = "same"
    val_by: str | None = None
    k: int | None = None
    bins: int | None = None
    seed: int = 0
    name: str | None = None
    baseline: bool = True
    report: bool = True

    @property
    def folder_name(self) -> str:
        """The cv folder's name."""
        return self.name or f"cv-{self.by}"


@dataclass(kw_only=True)
class FoldResult(JsonRecord):
    """One fold's figures (``fold_result.json``, a row of ``cv_results.csv``).

    Accuracies and macro F1 of the fold's test windows and recordings, the same for the
    baseline (``None`` when it was not run), and the share of the largest class among the test
    windows (what always answering that class would score).
    """

    FILE = FOLD_RESULT

    fold: str
    test_values: list[str]
    val_values: list[str]
    n_train: int
    n_val: int
    n_test: int
    test_windows: int
    window_accuracy: float | None
    window_f1_macro: float | None
    recording_accuracy: float | None
    recording_f1_macro: float | None
    baseline_window_accuracy: float | None = None
    baseline_window_f1_macro: float | None = None
    baseline_recording_accuracy: float | None = None
    baseline_recording_f1_macro: float | None = None
    chance_majority: float
    chance_uniform: float
    fit_s: float
    run_dir: str


@dataclass
class CVResult:
    """What ``cv`` made: the folder, the per-fold results, the summary and the files."""

    cv_dir: Path
    folds: list[FoldResult]
    summary: dict[str, dict[str, float | None]]
    files: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- arguments
def parse_cv_args(argv: list[str]) -> tuple[CVSettings, list[str]]:
    """Split ``cv`` arguments into the settings and the arguments of each fold's ``fit``.

    Raises:
        DataValidationError: a missing ``--cv.by``, an unknown ``--cv.KEY`` or a bad value.
    """
    known = set(CVSettings.__dataclass_fields__)
    values: dict[str, Any] = {}
    fit_args: list[str] = []
    args = argv[1:] if argv[:1] == ["fit"] else list(argv)
    i = 0
    while i < len(args):
        key, eq, inline = args[i].partition("=")
        if key.startswith("--cv."):
            name = key.removeprefix("--cv.")
            if name not in known:
                raise DataValidationError(
                    Problem("command line", key, f"unknown option; known: {sorted(known)}")
                )
            if not eq and i + 1 >= len(args):
                raise DataValidationError(Problem("command line", key, "needs a value"))
            values[name] = yaml.safe_load(inline if eq else args[i + 1])
            i += 1 if eq else 2
            continue
        fit_args.append(args[i])
        i += 1
    if "by" not in values:
        raise DataValidationError(Problem("command line", "--cv.by", "is required"))
    for name in ("by", "val_by", "name"):
        if values.get(name) is not None:
            values[name] = str(values[name])
    if values.get("val_by") is not None:
        values.setdefault("val_rule", "column")
    if values.get("val_rule", "same") not in VAL_RULES:
        raise DataValidationError(
            Problem("command line", "--cv.val_rule", f"expected one of {', '.join(VAL_RULES)}")
        )
    for name in ("k", "bins", "seed"):
        if values.get(name) is not None and (
            isinstance(values[name], bool) or not isinstance(values[name], int)
        ):
            raise DataValidationError(
                Problem(
                    "command line", f"--cv.{name}", f"expected an integer, got {values[name]!r}"
                )
            )
    return CVSettings(**values), fit_args


def _data_and_root(fit_args: list[str]) -> tuple[Any, Path]:
    """The DataModule the fits would build (not set up), and ``trainer.default_root_dir``."""
    from jsonargparse import ActionConfigFile
    from lightning.pytorch.cli import LightningArgumentParser

    from damage_lightning.cli import DEFAULT_ROOT
    from damage_lightning.data.datamodule import DamageDataModule

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_lightning_class_args(DamageDataModule, "data")
    parser.add_argument("--trainer.default_root_dir", type=str, default=DEFAULT_ROOT)
    kept: list[str] = []
    i = 0
    while i < len(fit_args):
        key, eq, _ = fit_args[i].partition("=")
        step = 1 if eq else 2
        if key in ("--config", "-c") and not eq:
            text = Path(fit_args[i + 1]).read_text() if Path(fit_args[i + 1]).is_file() else ""
            config = yaml.safe_load(text or fit_args[i + 1]) or {}
            section = {k: config[k] for k in ("data",) if k in config}
            root = (config.get("trainer") or {}).get("default_root_dir")
            if root:
                section["trainer"] = {"default_root_dir": root}
            kept += ["--config", yaml.safe_dump(section)]
        elif key.startswith("--data.") or key == "--trainer.default_root_dir":
            kept += fit_args[i : i + step]
        else:
            step = 1 if eq or i + 1 >= len(fit_args) or fit_args[i + 1].startswith("--") else 2
        i += step
    cfg = parser.parse_args(kept)
    data = DamageDataModule(**cfg["data"].as_dict())
    return data, Path(cfg["trainer.default_root_dir"]).expanduser()


# ----------------------------------------------------------------------------- folds
def _fit_fold(fit_args: list[str], run_dir: Path) -> None:
    from damage_lightning.cli import DamageCLI

    args = ["fit", *fit_args, "--trainer.default_root_dir", str(run_dir.parent)]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        print(f"cv: resuming {run_dir.name} from {last}")
        args += ["--ckpt_path", str(last)]
    else:
        if run_dir.exists():
            print(f"cv: {run_dir.name} stopped before its first checkpoint; starting it again")
            shutil.rmtree(run_dir)
        args += ["--run_name", run_dir.name]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        with contextlib.ExitStack() as stack:
            DamageCLI(args=args, exit_stack=stack)


def _baseline(data_kwargs: dict[str, Any], manifest: Path) -> dict[str, Any]:
    from damage_lightning.data.datamodule import DamageDataModule
    from damage_lightning.evaluation.baseline import score_baseline

    dm = DamageDataModule(**{**data_kwargs, "manifest": str(manifest)})
    dm.setup("fit")
    dm.setup("test")
    assert dm.dataset is not None
    names = [r.relpath for r in dm.dataset.recordings]
    return score_baseline(
        dm.waveform_windows("train"), dm.waveform_windows("test"), dm.class_names, names
    )


def _chance(confusion: np.ndarray) -> tuple[float, float]:
    """Share of the largest true class among the test windows, and one over the classes."""
    counts = confusion.sum(axis=1)
    return float(counts.max() / max(counts.sum(), 1)), 1.0 / len(counts)


def run_fold(
    fold: Fold,
    cv_dir: Path,
    manifest_text: str,
    fit_args: list[str],
    data_kwargs: dict[str, Any],
    baseline: bool,
) -> FoldResult:
    """Fit and test one fold (or resume it), score the baseline, write ``fold_result.json``."""
    manifest = cv_dir / "manifests" / f"{fold.name}.csv"
    atomic_write_text(manifest, manifest_text)
    run_dir = cv_dir / "folds" / fold.name
    fold_args = [
        *fit_args,
        "--data.data_dir",
        str(data_kwargs["data_dir"]),
        "--data.manifest",
        str(manifest.resolve()),
        "--data.split_strategy",
        "explicit",
    ]
    started = time.time()
    _fit_fold(fold_args, run_dir)
    fit_s = time.time() - started
    card = ModelCard.read(run_dir / MODEL_CARD_FILE)
    metrics = card.test_metrics
    if metrics is None:
        raise OutputLocationError(f"{run_dir}: the fold's run has no test metrics")
    rec = metrics.recording.recording if metrics.recording else None
    cm = np.asarray(metrics.confusion_matrix or [[0]])
    majority, uniform = _chance(cm)
    base = _baseline(data_kwargs, manifest) if baseline else None
    result = FoldResult(
        fold=fold.name,
        test_values=list(fold.test_values),
        val_values=list(fold.val_values),
        n_train=fold.count("train"),
        n_val=fold.count("val"),
        n_test=fold.count("test"),
        test_windows=int(cm.sum()),
        window_accuracy=metrics.accuracy,
        window_f1_macro=metrics.f1_macro,
        recording_accuracy=rec.accuracy if rec else None,
        recording_f1_macro=rec.f1_macro if rec else None,
        baseline_window_accuracy=base["window"]["accuracy"] if base else None,
        baseline_window_f1_macro=base["window"]["f1_macro"] if base else None,
        baseline_recording_accuracy=base["recording"]["accuracy"] if base else None,
        baseline_recording_f1_macro=base["recording"]["f1_macro"] if base else None,
        chance_majority=majority,
        chance_uniform=uniform,
        fit_s=round(fit_s, 1),
        run_dir=str(run_dir.relative_to(cv_dir)),
    )
    atomic_write_json(run_dir / FOLD_RESULT, result.to_json())
    return result


# ----------------------------------------------------------------------------- results
def summarise(results: list[FoldResult]) -> dict[str, dict[str, float | None]]:
    """Mean and sample standard deviation over the folds of every figure in :data:`METRICS`."""
    out: dict[str, dict[str, float | None]] = {}
    for name in METRICS:
        xs = [getattr(r, name) for r in results if getattr(r, name) is not None]
        out[name] = {
            "mean": float(np.mean(xs)) if xs else None,
            "sd": float(np.std(xs, ddof=1)) if len(xs) > 1 else None,
        }
    return out


def write_results(
    cv_dir: Path, plan: FoldPlan, results: list[FoldResult], settings: CVSettings
) -> list[Path]:
    """``cv_results.csv`` (folds, then mean and sd) and ``cv_results.json``."""
    import pandas as pd

    from damage_lightning.evaluation.baseline import NAME

    summary = summarise(results)
    rows = []
    for r in results:
        row = r.to_json()
        row["test_values"] = ";".join(r.test_values)
        row["val_values"] = ";".join(r.val_values)
        rows.append(row)
    frame = pd.DataFrame(rows)
    counts = ["n_train", "n_val", "n_test", "test_windows"]
    for stat in ("mean", "sd"):
        frame.loc[len(frame)] = {"fold": stat, **{k: v[stat] for k, v in summary.items()}}
    frame[counts] = frame[counts].astype("Int64")
    csv_path = cv_dir / RESULTS_CSV
    atomic_write_bytes(csv_path, frame.to_csv(index=False, float_format="%.4f").encode())
    json_path = cv_dir / RESULTS_JSON
    document = {
        "by": plan.by,
        "val_rule": plan.val_rule,
        "val_by": plan.val_by,
        "k": plan.k,
        "bins": plan.bins,
        "n_folds": len(plan.folds),
        "complete": len(results) == len(plan.folds),
        "baseline": NAME if settings.baseline else None,
        "folds": [r.to_json() for r in results],
        "summary": summary,
    }
    atomic_write_json(json_path, document)
    return [csv_path, json_path]


def _check_plan(cv_dir: Path, plan: FoldPlan, fit_args: list[str]) -> None:
    path = cv_dir / PLAN_FILE
    document = {"fit_args": fit_args, "plan": plan.to_json()}
    if not path.is_file():
        atomic_write_json(path, document)
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputLocationError(
            f"{path}: unreadable ({exc}); remove it or use --cv.name"
        ) from None
    if old.get("plan") != json.loads(json.dumps(plan.to_json())):
        raise OutputLocationError(
            f"{path}: this cv folder holds other folds (data or --cv options changed); "
            "choose another --cv.name to start a new cross-validation"
        )
    if old.get("fit_args") != fit_args:
        raise OutputLocationError(
            f"{path}: this cv folder was run with other fit options ({old.get('fit_args')}); "
            "choose another --cv.name, or rerun with the same options to resume"
        )


def run(settings: CVSettings, fit_args: list[str]) -> CVResult:
    """Plan the folds, run (or resume) each, write the results; see the module docstring."""
    data, root = _data_and_root(fit_args)
    data.prepare_data()
    specs = data.recordings
    plan = plan_folds(
        specs,
        settings.by,
        val_rule=settings.val_rule,  # type: ignore[arg-type]
        val_by=settings.val_by,
        k=settings.k,
        bins=settings.bins,
        seed=settings.seed,
        source=str(data.hparams.manifest or "manifest.csv"),
    )
    cv_dir = root / settings.folder_name
    cv_dir.mkdir(parents=True, exist_ok=True)
    _check_plan(cv_dir, plan, fit_args)
    header, rows = manifest_rows(specs)
    data_kwargs = {**dict(data.hparams), "data_dir": str(data.data_root)}
    data_kwargs.pop("split_strategy", None)
    data_kwargs["split_strategy"] = "explicit"
    results: list[FoldResult] = []
    for n, fold in enumerate(plan.folds, 1):
        done = cv_dir / "folds" / fold.name / FOLD_RESULT
        if done.is_file():
            results.append(FoldResult.read(done))
            print(f"cv: fold {n}/{len(plan.folds)} {fold.name}: done before, skipped")
            continue
        print(
            f"cv: fold {n}/{len(plan.folds)} {fold.name}: test {', '.join(fold.test_values)}; "
            f"{fold.count('train')} training, {fold.count('val')} validation, "
            f"{fold.count('test')} test recordings"
        )
        result = run_fold(
            fold,
            cv_dir,
            fold_manifest(header, rows, fold),
            fit_args,
            data_kwargs,
            settings.baseline,
        )
        results.append(result)
        write_results(cv_dir, plan, results, settings)
    files = write_results(cv_dir, plan, results, settings)
    if settings.report:
        from damage_lightning.report.cv_summary import write_summary

        files += write_summary(cv_dir, settings, results, summarise(results), len(plan.folds))
    return CVResult(cv_dir=cv_dir, folds=results, summary=summarise(results), files=files)


USAGE = """usage: python -m damage_lightning cv --config CONFIG [fit options] --cv.by COLUMN
                                   [--cv.KEY VALUE ...]

Leave-one-value-out cross-validation over a manifest column: one fit per fold in its own run
folder, results in cv_results.csv/json, cv_summary.png and cv_report.pdf. A rerun resumes.
Keys (--cv.KEY):
"""


def main_cv(argv: list[str]) -> int:
    """``python -m damage_lightning cv``: run (or resume) the cross-validation, print a table."""
    if {"-h", "--help"} & set(argv):
        print(USAGE + (CVSettings.__doc__ or "").split("Args:", 1)[1])
        return 0
    settings, fit_args = parse_cv_args(argv)
    result = run(settings, fit_args)
    print()
    print(
        f"{'fold':24s} {'window acc':>10s} {'recording acc':>13s} {'baseline':>9s} {'chance':>7s}"
    )

    def cell(x: float | None, width: int) -> str:
        return f"{x:{width}.3f}" if x is not None else " " * (width - 1) + "-"

    for r in result.folds:
        print(
            f"{r.fold:24s} {cell(r.window_accuracy, 10)} {cell(r.recording_accuracy, 13)} "
            f"{cell(r.baseline_window_accuracy, 9)} {cell(r.chance_majority, 7)}"
        )
    s = result.summary
    print(
        f"{'mean':24s} {cell(s['window_accuracy']['mean'], 10)} "
        f"{cell(s['recording_accuracy']['mean'], 13)} "
        f"{cell(s['baseline_window_accuracy']['mean'], 9)} {cell(s['chance_majority']['mean'], 7)}"
    )
    for path in result.files:
        print(f"wrote: {path}")
    sys.stdout.flush()
    return 0
