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
from damage_lightning.artifacts import atomic_write_bytes, to_jsonable
from damage_lightning.card import (
    HISTORY_FILE,
    MODEL_CARD_FILE,
    DataSummary,
    EvaluationMetrics,
    ExportEntry,
    InputSpec,
    ModelCard,
    ModelSummary,
    SplitSummary,
    TrainerSummary,
    TrainingHistory,
)
from damage_lightning.deploy.metadata import SPEED_INPUT_KEY
from damage_lightning.report.options import ReportOptions

log = logging.getLogger(__name__)


def _relative(path: str | Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _best_epoch(run_dir: Path) -> int | None:
    try:
        return TrainingHistory.read(run_dir / HISTORY_FILE).best_epoch
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
    quantize: str | None = None,
    attribution: dict[str, Any] | None = None,
) -> ModelCard:
    """After fit and test (rank zero): exports, ``model_info.json``, the report and the summary.

    The model holds the best checkpoint's weights (``trainer.test`` loaded them). Export
    verification failures raise; a failing report is logged and never fails the run. ``report``
    holds the ``ReportOptions`` fields (the CLI's ``--report.*``); ``quantize="int8"`` also
    exports ``model.int8.onnx`` (the CLI's ``--export.quantize``); ``attribution`` holds the
    ``AttributionOptions`` fields (``--attribution.*``) of ``attribution.json``.
    """
    from damage_lightning.export import ExportSpec, QuantizationData, export_all

    # The same record the checkpoint holds: exports after fit and `export` from the checkpoint
    # carry identical metadata.
    spec = ExportSpec.of(model, datamodule)
    deployable = model.deployable(datamodule.frontend)
    int8 = QuantizationData.from_datamodule(datamodule) if quantize == "int8" else None
    metadata = spec.metadata(**deployable.metadata_extra)
    exports = export_all(deployable, run_dir / "export", metadata, int8=int8)
    for entry in exports.values():
        entry["path"] = _relative(entry["path"], run_dir)

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hparams = {
        k: v
        for k, v in dict(model.hparams).items()
        if k not in ("class_names", "num_classes", "in_channels", "input_shape")
    }
    plan = datamodule.plan
    groups = [r.group for r in datamodule.dataset.recordings]
    test_results = getattr(model, "test_results", None)
    # Parts that other modules return as dicts are checked against the card's schema here.
    card = ModelCard(
        run_name=run_dir.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=round(time.time() - started, 2),
        seed=seed,
        model=ModelSummary(
            class_path=spec.model_class_path,
            name=type(model).__name__,
            parameters=params,
            trainable_parameters=trainable,
            hyperparameters=hparams,
            architecture=str(model.net),
        ),
        input=InputSpec(
            channels=spec.channels,
            sample_rate=spec.sample_rate,
            window_length=spec.window,
            hop=spec.hop,
            spectrogram_shape=list(datamodule.input_shape),
            frontend=spec.frontend_settings,
            speed_input=metadata.extra.get(SPEED_INPUT_KEY),
            speed_column=metadata.speed_column,
        ),
        classes=spec.class_names,
        data=DataSummary.from_json(to_jsonable(datamodule.data_summary()), where="data"),
        splits=SplitSummary.from_json(
            to_jsonable(
                {
                    "strategy": plan.strategy,
                    "gap_samples": plan.gap,
                    "summary": plan.summary(datamodule.dataset.labels, groups),
                    "leakage_check": plan.check_no_leakage(groups),
                }
            ),
            where="splits",
        ),
        best_epoch=_best_epoch(run_dir),
        best_checkpoint=_relative(best_checkpoint, run_dir) if best_checkpoint else None,
        last_checkpoint="checkpoints/last.ckpt"
        if (run_dir / "checkpoints" / "last.ckpt").is_file()
        else None,
        test_metrics=EvaluationMetrics.from_json(to_jsonable(test_results), where="test_metrics")
        if test_results
        else None,
        exports={
            name: ExportEntry.from_json(to_jsonable(entry), where=f"exports.{name}")
            for name, entry in exports.items()
        },
        trainer=TrainerSummary(
            accelerator=type(trainer.accelerator).__name__,
            devices=trainer.num_devices,
            strategy=type(trainer.strategy).__name__,
            precision=trainer.precision,
            epochs_run=trainer.current_epoch,
            max_epochs=trainer.max_epochs,
        ),
        versions={
            "damage_lightning": damage_lightning.__version__,
            "torch": torch.__version__,
            "torchaudio": _version("torchaudio"),
            "lightning": lightning.__version__,
            "onnxruntime": _version("onnxruntime"),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    )
    card.sensor_health = getattr(datamodule, "sensor_health", None)
    from damage_lightning.tasks.attribution import run_attribution

    card.attribution = run_attribution(model, datamodule, run_dir, attribution)
    novelty = getattr(model, "novelty_results", None)
    if novelty is not None:
        card.novelty = novelty
        _write_novelty_scores(model, datamodule, run_dir)
    card.write(run_dir / MODEL_CARD_FILE)

    pdf = None
    options = ReportOptions(**(report or {}))
    if options.enabled:
        try:
            from damage_lightning.report.build import generate_report

            result = generate_report(
                run_dir,
                llm=options.llm,
                llm_model=options.model,
                timeout=options.timeout,
                max_retries=options.max_retries,
            )
            pdf = result.pdf_path
            print(f"analysis: {result.analysis_source}")
            if result.fallback_reason:
                print(f"  ({result.fallback_reason})")
        except Exception as exc:  # a report problem must never lose the trained model
            log.exception("the report could not be written")
            print(f"warning: the report could not be written: {exc}", file=sys.stderr)

    print()
    if card.novelty is not None and card.novelty.test is not None:
        from damage_lightning.evaluation.detection import summary_line

        print(summary_line(card.novelty))
    else:
        tm = card.test_metrics
        accuracy = tm.accuracy if tm and tm.accuracy is not None else float("nan")
        f1_macro = tm.f1_macro if tm and tm.f1_macro is not None else float("nan")
        print(f"test accuracy: {accuracy:.4f}  macro F1: {f1_macro:.4f}")
    print(
        f"checkpoint: {run_dir / card.best_checkpoint}"
        if card.best_checkpoint
        else "checkpoint: none"
    )
    print(f"onnx: {run_dir / card.exports['onnx'].path}")
    print(f"torchscript: {run_dir / card.exports['torchscript'].path}")
    if "int8" in card.exports:
        print(f"int8 onnx: {run_dir / card.exports['int8'].path}")
    if pdf:
        print(f"report: {pdf}")
    print(f"run folder: {run_dir}")
    sys.stdout.flush()
    return card


def _write_novelty_scores(model: Any, datamodule: Any, run_dir: Path) -> None:
    from damage_lightning.evaluation.scores_file import SCORES_FILE, scores_frame, write_scores

    if model.test_scores:
        names = [r.relpath for r in datamodule.dataset.recordings]
        threshold = float(model.net.threshold)
        frame = scores_frame(model.test_scores, names, model.class_names, threshold)
        write_scores(run_dir / SCORES_FILE, frame)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_predictions(
    outputs: list[dict[str, torch.Tensor]], datamodule: Any, out_dir: Path, model: Any = None
) -> list[Path]:
    """Write ``predictions.csv`` (per window) and ``recording_predictions.csv`` (per recording).

    The per-recording decision and table are the gateway's (``damage_lightning.deploy``), so
    ``predict`` and ``python -m damage_lightning.deploy`` agree row for row: windows that overlap
    a sensor-health finding (``datamodule.predict_findings``) get ``sensor_ok`` false and stay
    out of their recording's decision. A novelty detector's outputs (``score``, ``alarm``) give
    scores and alarms instead of class probabilities.

    Args:
        outputs: what ``predict_step`` returned per batch.
        datamodule: the DamageDataModule that produced the batches.
        out_dir: folder for the two CSV files.
        model: the task that predicted (its decision rule is needed for novelty outputs).
    """
    if outputs and "score" in outputs[0]:
        from damage_lightning.evaluation.scores_file import write_novelty_predictions

        return write_novelty_predictions(outputs, datamodule.predict_recordings(), model, out_dir)
    from damage_lightning.deploy.decision import WindowSums, decide
    from damage_lightning.deploy.predict import (
        add_health_columns,
        gated_row,
        recording_columns,
        to_csv_bytes,
        window_rows,
    )
    from damage_lightning.evaluation.health import WindowHealth, index_health

    names = datamodule.class_names
    hparams = getattr(model, "hparams", {})
    rule = hparams.get("aggregation", "mean_log_prob")
    abstain = hparams.get("abstain")
    threshold = getattr(model, "gate_threshold", None)
    recordings = datamodule.predict_recordings()
    probs = torch.cat([o["probabilities"] for o in outputs]).double().numpy()
    rec = torch.cat([o["recording"] for o in outputs]).numpy()
    start = torch.cat([o["start"] for o in outputs]).numpy()
    dist = None
    if threshold is not None and "distance" in outputs[0]:
        dist = torch.cat([o["distance"] for o in outputs]).double().numpy()
    health = index_health(rec, start, datamodule.predict_findings(), datamodule.window)
    reasons = np.asarray(health.reasons, dtype=object)
    window_parts, rows = [], []
    for r in sorted(set(rec.tolist())):
        path, label = recordings[r]
        mask = rec == r
        batch = (start[mask], probs[mask], None if dist is None else dist[mask])
        frame = window_rows(path, label, [batch], names, abstain, threshold)
        window_parts.append(
            add_health_columns(frame, WindowHealth(health.ok[mask], list(reasons[mask])))
        )
    for r in sorted(set(rec.tolist()), key=lambda r: recordings[r][0]):
        path, label = recordings[r]
        passed = (rec == r) & health.ok
        decision = None
        if passed.any():
            sums = WindowSums.of(probs[passed], None if dist is None else dist[passed])
            decision = decide(sums, rule, abstain, threshold)
        flagged = int(np.count_nonzero((rec == r) & ~health.ok))
        rows.append(gated_row(path, label, decision, flagged, names))
    windows = pd.concat(window_parts, ignore_index=True)
    per_rec = pd.DataFrame(rows, columns=recording_columns(names, threshold is not None))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "predictions.csv", out_dir / "recording_predictions.csv"]
    atomic_write_bytes(paths[0], to_csv_bytes(windows))
    atomic_write_bytes(paths[1], to_csv_bytes(per_rec))
    return paths
