"""The run folder's end-of-fit artefacts (model card, exports, report) and prediction CSVs.

Called by the CLI after ``fit`` and ``predict``; the callbacks that run during training are in
:mod:`damage_lightning.callbacks`.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

import damage_lightning
from damage_lightning.artifacts import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


def _relative(path: str | Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _best_epoch(run_dir: Path) -> int | None:
    import json

    try:
        return json.loads((run_dir / "training_history.json").read_text()).get("best_epoch")
    except (OSError, ValueError):
        return None


def finalize_run(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: Any,
    run_dir: Path,
    *,
    best_checkpoint: str,
    seed: Any,
    started: float,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """After fit and test (rank zero): exports, ``model_info.json``, the report and the summary.

    The model holds the best checkpoint's weights (``trainer.test`` loaded them). Export
    verification failures raise; a failing report is logged and never fails the run.
    """
    from damage_lightning.export import DeployableModel, ExportSpec, export_all

    report = report or {}
    # The same record the checkpoint holds: exports after fit and `export` from the checkpoint
    # carry identical metadata.
    spec = ExportSpec.of(model, datamodule)
    deployable = DeployableModel(datamodule.frontend, model.net)
    exports = export_all(deployable, run_dir / "export", spec.metadata())
    for entry in exports.values():
        entry["path"] = _relative(entry["path"], run_dir)

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cls = type(model)
    hparams = {
        k: v
        for k, v in dict(model.hparams).items()
        if k not in ("class_names", "num_classes", "in_channels", "input_shape")
    }
    plan = datamodule.plan
    groups = [r.group for r in datamodule.dataset.recordings]
    info: dict[str, Any] = {
        "run_name": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 2),
        "seed": seed,
        "model": {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "name": cls.__name__,
            "parameters": params,
            "trainable_parameters": trainable,
            "hyperparameters": hparams,
            "architecture": str(model.net),
        },
        "input": {
            "channels": spec.channels,
            "sample_rate": spec.sample_rate,
            "window_length": spec.window,
            "hop": spec.hop,
            "spectrogram_shape": list(datamodule.input_shape),
            "frontend": spec.frontend_settings,
        },
        "classes": spec.class_names,
        "data": datamodule.data_summary(),
        "splits": {
            "strategy": plan.strategy,
            "gap_samples": plan.gap,
            "summary": plan.summary(datamodule.dataset.labels, groups),
            "leakage_check": plan.check_no_leakage(groups),
        },
        "best_epoch": _best_epoch(run_dir),
        "best_checkpoint": _relative(best_checkpoint, run_dir) if best_checkpoint else None,
        "last_checkpoint": "checkpoints/last.ckpt"
        if (run_dir / "checkpoints" / "last.ckpt").is_file()
        else None,
        "test_metrics": getattr(model, "test_results", None),
        "exports": exports,
        "trainer": {
            "accelerator": type(trainer.accelerator).__name__,
            "devices": trainer.num_devices,
            "strategy": type(trainer.strategy).__name__,
            "precision": trainer.precision,
            "epochs_run": trainer.current_epoch,
            "max_epochs": trainer.max_epochs,
        },
        "versions": {
            "damage_lightning": damage_lightning.__version__,
            "torch": torch.__version__,
            "torchaudio": _version("torchaudio"),
            "lightning": lightning.__version__,
            "onnxruntime": _version("onnxruntime"),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    }
    info_path = run_dir / "model_info.json"
    atomic_write_json(info_path, info)

    pdf = None
    if report.get("enabled", True):
        try:
            from damage_lightning.report.build import generate_report

            result = generate_report(
                run_dir,
                llm=bool(report.get("llm", True)),
                llm_model=report.get("model"),
                timeout=float(report.get("timeout", 60.0)),
                max_retries=int(report.get("max_retries", 2)),
            )
            pdf = result.pdf_path
            print(f"analysis: {result.analysis_source}")
            if result.fallback_reason:
                print(f"  ({result.fallback_reason})")
        except Exception as exc:  # a report problem must never lose the trained model
            log.exception("the report could not be written")
            print(f"warning: the report could not be written: {exc}", file=sys.stderr)

    tm = info["test_metrics"] or {}
    print()
    print(
        f"test accuracy: {tm.get('accuracy', float('nan')):.4f}  "
        f"macro F1: {tm.get('f1_macro', float('nan')):.4f}"
    )
    print(
        f"checkpoint: {run_dir / info['best_checkpoint']}"
        if info["best_checkpoint"]
        else "checkpoint: none"
    )
    print(f"onnx: {run_dir / exports['onnx']['path']}")
    print(f"torchscript: {run_dir / exports['torchscript']['path']}")
    if pdf:
        print(f"report: {pdf}")
    print(f"run folder: {run_dir}")
    sys.stdout.flush()
    return info


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_predictions(
    outputs: list[dict[str, torch.Tensor]], datamodule: Any, out_dir: Path
) -> list[Path]:
    """Write ``predictions.csv`` (per window) and ``recording_predictions.csv`` (per recording).

    The per-recording decision and table are the gateway's (``damage_lightning.deploy``), so
    ``predict`` and ``python -m damage_lightning.deploy`` agree row for row.

    Args:
        outputs: what ``predict_step`` returned per batch.
        datamodule: the DamageDataModule that produced the batches.
        out_dir: folder for the two CSV files.
    """
    from damage_lightning.deploy.predict import (
        RECORDING_COLUMNS,
        aggregate_windows,
        recording_row,
        to_csv_bytes,
    )

    names = datamodule.class_names
    recordings = datamodule.predict_recordings()
    probs = torch.cat([o["probabilities"] for o in outputs]).double().numpy()
    rec = torch.cat([o["recording"] for o in outputs]).numpy()
    start = torch.cat([o["start"] for o in outputs]).numpy()
    windows = pd.DataFrame(
        {
            "recording": [recordings[r][0] for r in rec],
            "label": [recordings[r][1] or "" for r in rec],
            "start": start,
            "predicted": [names[i] for i in probs.argmax(axis=1)],
        }
    )
    for i, c in enumerate(names):
        windows[f"p_{c}"] = probs[:, i]
    rows = [
        recording_row(recordings[r][0], recordings[r][1], aggregate_windows(probs[rec == r]), names)
        for r in sorted(set(rec.tolist()), key=lambda r: recordings[r][0])
    ]
    per_rec = pd.DataFrame(rows, columns=[*RECORDING_COLUMNS, *(f"p_{c}" for c in names)])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "predictions.csv", out_dir / "recording_predictions.csv"]
    atomic_write_bytes(paths[0], to_csv_bytes(windows))
    atomic_write_bytes(paths[1], to_csv_bytes(per_rec))
    return paths
