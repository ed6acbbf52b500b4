"""Experiment trackers of a run: the run folder's own loggers and the files sent to MLflow.

Every run logs to ``metrics.csv`` and to TensorBoard event files in ``tensorboard/`` of its run
folder, so ``tensorboard --logdir models`` shows every run; loggers named in the config (such as
``configs/mlflow.yaml``'s ``MLFlowLogger``) log beside them. At the end of fit the run's card,
config, history, report and exports are attached to each MLflow run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

TENSORBOARD_DIR = "tensorboard"
# Run-folder files attached to an MLflow run, and the artefact folder each goes into.
MLFLOW_FILES = (
    ("model_info.json", ""),
    ("config.yaml", ""),
    ("training_history.json", ""),
    ("splits.json", ""),
    ("report/training_report.pdf", "report"),
)
MLFLOW_DIRS = ("export",)


def run_loggers(run_dir: Path, configured: Any) -> list[Logger] | bool:
    """The loggers of a run: CSV and TensorBoard in the run folder, then those the config names.

    Args:
        run_dir: the run folder.
        configured: the config's ``trainer.logger`` as instantiated: ``None``/``True`` (no
            logger of its own), ``False`` (no logging at all), a logger or a list of loggers.

    Returns:
        ``False`` when logging is switched off, else the list of loggers. The CSV logger is first,
        so ``trainer.log_dir`` stays the run folder.
    """
    if configured is False:
        return False
    if configured in (None, True):
        extra: list[Logger] = []
    elif isinstance(configured, Iterable):
        extra = list(configured)
    else:
        extra = [configured]
    own: list[Logger] = [
        CSVLogger(save_dir=str(run_dir), name="", version=""),
        # A folder of its own: both loggers write an hparams.yaml into their log directory.
        TensorBoardLogger(
            save_dir=str(run_dir), name=TENSORBOARD_DIR, version="", default_hp_metric=False
        ),
    ]
    return own + extra


def attach_run_files(loggers: Iterable[Logger], run_dir: Path) -> list[str]:
    """Attach the finished run's files to every MLflow run among ``loggers``.

    Args:
        loggers: the trainer's loggers.
        run_dir: the run folder (after the model card, exports and report are written).

    Returns:
        The MLflow run ids that received the files.
    """
    ids = []
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger) or logger.run_id is None:
            continue
        client, run_id = logger.experiment, logger.run_id
        client.set_tag(run_id, "damage_lightning.run_dir", str(run_dir.resolve()))
        for rel, folder in MLFLOW_FILES:
            if (run_dir / rel).is_file():
                client.log_artifact(run_id, str(run_dir / rel), artifact_path=folder or None)
        for rel in MLFLOW_DIRS:
            if (run_dir / rel).is_dir():
                client.log_artifacts(run_id, str(run_dir / rel), artifact_path=rel)
        ids.append(run_id)
    return ids
