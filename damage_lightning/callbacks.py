"""Run artifacts: checkpoints, per-epoch history, the end-of-fit model card, exports and report.

Also the prediction CSVs of the ``predict`` command.
"""

from __future__ import annotations

import copy
import itertools
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
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

import damage_lightning
from damage_lightning.artifacts import atomic_write_bytes, atomic_write_json, to_jsonable
from damage_lightning.card import (
    MODEL_CARD_FILE,
    DataSummary,
    EvaluationMetrics,
    ExportEntry,
    InputSpec,
    ModelCard,
    ModelSummary,
    SplitSummary,
    TrainerSummary,
)
from damage_lightning.report.options import ReportOptions

log = logging.getLogger(__name__)

HISTORY_KEYS = ("train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1")


def _relative(path: str | Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is always the latest completed epoch.

    Lightning 2.6 writes ``last.ckpt`` only in a step where it also writes a top-k checkpoint (a
    new best), so after epochs without improvement it lags behind, and ``--ckpt_path last`` would
    resume a killed run from its best epoch and lose the epochs after it. This saves it at the end
    of every epoch, in ModelCheckpoint's own hook and code path (after EarlyStopping has updated
    its state; every rank takes part, so distributed runs stay in step). Arguments are
    ModelCheckpoint's.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the top-k checkpoint as usual, then ``last.ckpt`` if that did not already."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Same, for runs that validate less often than every epoch."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        if (
            self.save_last is True
            and self._last_global_step_saved != trainer.global_step
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RunArtifacts(Callback):
    """Writes ``training_history.json`` after every epoch and ``splits.json`` at the start of fit.

    Rank zero only. A resumed run keeps the history of the epochs before the checkpoint and
    replaces anything recorded after it, so the file always describes the run that continues.
    On Ctrl-C it saves ``checkpoints/last.ckpt`` and prints how to resume.

    Args:
        run_dir: the run folder.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.history: dict[str, Any] | None = None
        self._epoch_start = 0.0
        self._epoch_lr: float | None = None

    @property
    def history_path(self) -> Path:
        """Where the history is written."""
        return self.run_dir / "training_history.json"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the split assignment."""
        dm = trainer.datamodule
        if trainer.is_global_zero and dm is not None and hasattr(dm, "splits_json"):
            atomic_write_json(self.run_dir / "splits.json", dm.splits_json())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the epoch's start time and learning rate."""
        self._epoch_start = time.perf_counter()
        self._epoch_lr = (
            float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch (validation has run by now) and rewrite the history file."""
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        entry: dict[str, Any] = {"epoch": int(trainer.current_epoch)}
        for key in HISTORY_KEYS:
            if key in metrics:
                entry[key] = float(metrics[key])
        entry["lr"] = self._epoch_lr
        entry["epoch_time_s"] = round(time.perf_counter() - self._epoch_start, 4)
        history = self._load()
        history["epochs"] = [e for e in history["epochs"] if e["epoch"] < entry["epoch"]]
        history["epochs"].append(entry)
        self._write(trainer, history)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final history with the early-stopping outcome."""
        if trainer.is_global_zero:
            self._write(trainer, self._load())

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """On Ctrl-C, make sure ``last.ckpt`` exists and say how to resume.

        ``last.ckpt`` already holds the end of the last completed epoch (saved every epoch), and
        that is the state to resume from: the interrupted epoch then runs again from its start.
        Only when no epoch has completed yet is the current (mid-epoch) state saved.
        """
        if not isinstance(exception, KeyboardInterrupt):
            return
        path = self.run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            try:
                trainer.save_checkpoint(path)
            except Exception as exc:  # the interrupt must still end the run
                print(f"could not save {path}: {exc}", file=sys.stderr)
                return
        if trainer.is_global_zero:
            print(
                f"\ninterrupted: last checkpoint {path}\n"
                "resume with: python -m damage_lightning fit "
                f"--config {self.run_dir / 'config.yaml'} --ckpt_path {path}",
                file=sys.stderr,
            )

    def _load(self) -> dict[str, Any]:
        if self.history is None:
            import json

            self.history = {"epochs": []}
            if self.history_path.is_file():
                try:
                    self.history = json.loads(self.history_path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    log.warning("%s unreadable; starting a new history", self.history_path)
        return self.history

    def _write(self, trainer: pl.Trainer, history: dict[str, Any]) -> None:
        epochs = history["epochs"]
        history["monitor"] = "val_loss"
        history["max_epochs"] = trainer.max_epochs
        losses = [(e["val_loss"], e["epoch"]) for e in epochs if e.get("val_loss") is not None]
        if losses:
            best_loss, best_epoch = min(losses)
            history["best_epoch"], history["best_val_loss"] = best_epoch, best_loss
        history["lr_reductions"] = [
            {"epoch": b["epoch"], "from": a["lr"], "to": b["lr"]}
            for a, b in itertools.pairwise(epochs)
            if a.get("lr") is not None and b.get("lr") is not None and b["lr"] < a["lr"]
        ]
        for cb in trainer.callbacks:
            if isinstance(cb, EarlyStopping):
                history["early_stopping"] = {
                    "triggered": bool(cb.stopped_epoch),
                    "stopped_epoch": int(cb.stopped_epoch) if cb.stopped_epoch else None,
                    "patience": cb.patience,
                    "wait_count": cb.wait_count,
                    "monitor": cb.monitor,
                }
        atomic_write_json(self.history_path, history)


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
) -> ModelCard:
    """After fit and test (rank zero): exports, ``model_info.json``, the report and the summary.

    The model holds the best checkpoint's weights (``trainer.test`` loaded them). Export
    verification failures raise; a failing report is logged and never fails the run. ``report``
    holds the ``ReportOptions`` fields (the CLI's ``--report.*``).
    """
    from damage_lightning.export import DeployableModel, build_metadata, export_all

    spec = datamodule.export_spec()
    deployable = DeployableModel(
        copy.deepcopy(datamodule.frontend).cpu().float().eval(),
        copy.deepcopy(model.net).cpu().float().eval(),
    )
    metadata = build_metadata(
        spec["class_names"],
        spec["channels"],
        spec["sample_rate"],
        spec["window"],
        spec["hop"],
        spec["frontend_settings"],
    )
    exports = export_all(
        deployable, run_dir / "export", len(spec["channels"]), spec["window"], metadata
    )
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
    test_results = getattr(model, "test_results", None)
    # Parts that other modules return as dicts are checked against the card's schema here.
    card = ModelCard(
        run_name=run_dir.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=round(time.time() - started, 2),
        seed=seed,
        model=ModelSummary(
            class_path=f"{cls.__module__}.{cls.__qualname__}",
            name=cls.__name__,
            parameters=params,
            trainable_parameters=trainable,
            hyperparameters=hparams,
            architecture=str(model.net),
        ),
        input=InputSpec(
            channels=spec["channels"],
            sample_rate=spec["sample_rate"],
            window_length=spec["window"],
            hop=spec["hop"],
            spectrogram_shape=list(datamodule.input_shape),
            frontend=spec["frontend_settings"],
        ),
        classes=spec["class_names"],
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

    tm = card.test_metrics
    accuracy = tm.accuracy if tm and tm.accuracy is not None else float("nan")
    f1_macro = tm.f1_macro if tm and tm.f1_macro is not None else float("nan")
    print()
    print(f"test accuracy: {accuracy:.4f}  macro F1: {f1_macro:.4f}")
    print(
        f"checkpoint: {run_dir / card.best_checkpoint}"
        if card.best_checkpoint
        else "checkpoint: none"
    )
    print(f"onnx: {run_dir / card.exports['onnx'].path}")
    print(f"torchscript: {run_dir / card.exports['torchscript'].path}")
    if pdf:
        print(f"report: {pdf}")
    print(f"run folder: {run_dir}")
    sys.stdout.flush()
    return card


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

    Args:
        outputs: what ``predict_step`` returned per batch.
        datamodule: the DamageDataModule that produced the batches.
        out_dir: folder for the two CSV files.
    """
    names = datamodule.class_names
    recordings = datamodule.predict_recordings()
    probs = torch.cat([o["probabilities"] for o in outputs]).float().numpy()
    rec = torch.cat([o["recording"] for o in outputs]).numpy()
    start = torch.cat([o["start"] for o in outputs]).numpy()
    pred = probs.argmax(axis=1)
    windows = pd.DataFrame(
        {
            "recording": [recordings[r][0] for r in rec],
            "label": [recordings[r][1] or "" for r in rec],
            "start": start,
            "predicted": [names[i] for i in pred],
        }
    )
    for i, c in enumerate(names):
        windows[f"p_{c}"] = probs[:, i]
    rows = []
    for r in sorted(set(rec.tolist()), key=lambda r: recordings[r][0]):
        mask = rec == r
        mean = probs[mask].mean(axis=0)
        best = int(mean.argmax())
        row = {
            "path": recordings[r][0],
            "label": recordings[r][1] or "",
            "predicted_label": names[best],
            "n_windows": int(mask.sum()),
            "agreement": float((pred[mask] == best).mean()),
        }
        row.update({f"p_{c}": float(mean[i]) for i, c in enumerate(names)})
        rows.append(row)
    per_rec = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "predictions.csv", out_dir / "recording_predictions.csv"]
    atomic_write_bytes(paths[0], windows.to_csv(index=False, float_format="%.6f").encode())
    atomic_write_bytes(paths[1], per_rec.to_csv(index=False, float_format="%.6f").encode())
    return paths
