"""The host application's API: ``run_training`` and friends, returning a ``TrainingResult``.

It runs exactly the CLI's ``fit`` (same configs, same run folder, same artifacts); the whole
run's output is captured into the run's ``training_log.txt`` and so into the report.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from damage_lightning.card import MODEL_CARD_FILE, ModelCard
from damage_lightning.config_files import SHIPPED_DIR
from damage_lightning.errors import DataValidationError, OutputLocationError, Problem

if TYPE_CHECKING:
    from damage_lightning.cv import CVResult

# The configs shipped inside the package (``damage_lightning/configs/``, package data).
CONFIG_DIR = SHIPPED_DIR
#: The shipped model configs a runner call can start from (``configs/<model_type>.yaml``).
MODEL_TYPES = ("cnn", "resnet", "bearing")


@dataclass
class TrainingResult:
    """What a training run produced.

    Attributes:
        run_dir: the run folder.
        checkpoint: best checkpoint (``checkpoints/best.ckpt``).
        onnx_path: exported ONNX model.
        torchscript_path: exported TorchScript model.
        report_path: the PDF report (``None`` when disabled or failed).
        model_info_path: ``model_info.json``.
        metrics: test metrics: window-level (accuracy, f1_macro, loss, per_class,
            confusion_matrix), ``calibration`` (temperature, ECE/Brier before and after) and
            ``recording`` (recording- and group-level metrics, the worst-first table).
        duration_s: wall time of the whole run.
        model_type: ``cnn``, ``resnet``, ``bearing`` or the class path of a custom model.
    """

    run_dir: Path
    checkpoint: Path | None
    onnx_path: Path | None
    torchscript_path: Path | None
    report_path: Path | None
    model_info_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    model_type: str = "cnn"


def override_args(overrides: dict[str, Any]) -> list[str]:
    """CLI options for ``overrides`` (``{"trainer.max_epochs": 3}``; ``__`` stands for ``.``)."""
    args: list[str] = []
    for key, value in overrides.items():
        flag = "--" + key.replace("__", ".")
        if isinstance(value, bool | list | dict | tuple) or value is None:
            value = json.dumps(value)
        args += [flag, str(value)]
    return args


def _fit_args(
    data_path: str | os.PathLike | None,
    save_dir: str | os.PathLike,
    model_type: str,
    config: str | os.PathLike | None,
    overrides: dict[str, Any],
) -> list[str]:
    """The ``fit`` options of a runner call (checked: model type, data path, config files)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if data_path is not None and not Path(data_path).exists():
        raise DataValidationError(Problem(str(data_path), "", "data path does not exist"))
    base = CONFIG_DIR / f"{model_type}.yaml"
    if not base.is_file():
        raise FileNotFoundError(f"{base}: the package's config is missing (reinstall the package)")
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"{config}: config file not found")
    args = ["--config", str(base)]
    if config is not None:
        args += ["--config", str(config)]
    if data_path is not None:
        args += ["--data.data_dir", str(data_path)]
    args += ["--trainer.default_root_dir", str(save_dir)]
    return args + override_args(overrides)


def run_training(
    data_path: str | os.PathLike | None,
    save_dir: str | os.PathLike,
    model_type: Literal["cnn", "resnet", "bearing"] = "cnn",
    config: str | os.PathLike | None = None,
    run_name: str | None = None,
    **overrides: Any,
) -> TrainingResult:
    """Train, test, export and report one model; the same code path as the CLI's ``fit``.

    Args:
        data_path: folder of recordings (see the DataModule); ``None`` uses the built-in data.
        save_dir: where run folders are created (``trainer.default_root_dir``).
        model_type: ``cnn``, ``resnet`` or ``bearing`` (selects ``configs/<model_type>.yaml``;
            ``bearing`` is the recommended config for rotating machinery, whose model section
            is not a CNN's, so it cannot be stacked on ``cnn.yaml`` as ``config``).
        config: an extra YAML config applied after the model's own (for example
            ``configs/cwru.yaml``).
        run_name: name of the run folder (default ``<model>-<timestamp>``).
        **overrides: any CLI option, dots written as double underscores or passed as a dict key:
            ``trainer__max_epochs=3`` or ``**{"model.init_args.dropout": 0.2}``.

    Returns:
        The run's paths, test metrics and duration.

    Raises:
        ValueError: unknown ``model_type``.
        ConfigError: an override the data module, model or trainer refuses (a ValueError
            naming the setting), before any training.
        DataValidationError: missing data path, or bad data (before any training).
        OutputLocationError: ``save_dir`` cannot be written.
    """
    args = ["fit", *_fit_args(data_path, save_dir, model_type, config, overrides)]
    if run_name:
        args += ["--run_name", run_name]
    import contextlib

    from damage_lightning.cli import DamageCLI

    started = time.time()
    with contextlib.ExitStack() as stack:
        cli = DamageCLI(args=args, exit_stack=stack)
    run_dir = cli.run_dir
    assert run_dir is not None
    info_path = run_dir / MODEL_CARD_FILE
    card = ModelCard.read(info_path)
    exports = card.exports or {}

    def _path(rel: str | None) -> Path | None:
        return run_dir / rel if rel else None

    return TrainingResult(
        run_dir=run_dir,
        checkpoint=_path(card.best_checkpoint),
        onnx_path=_path(exports["onnx"].path if "onnx" in exports else None),
        torchscript_path=_path(exports["torchscript"].path if "torchscript" in exports else None),
        report_path=_path(card.report.path if card.report else None),
        model_info_path=info_path,
        metrics=card.test_metrics.to_json() if card.test_metrics else {},
        duration_s=round(time.time() - started, 2),
        model_type=model_type,
    )


@dataclass
class PredictionResult:
    """What :func:`run_prediction` decided, one row per recording.

    Attributes:
        recordings: for a classifier ``path``, ``label``, ``predicted_label`` (top class),
            ``decision`` (the class, ``unknown`` below the model's abstain floor),
            ``confidence``, ``n_windows``, ``agreement`` and ``p_<class>``; for a novelty
            detector its scores and alarms: the same table as ``predict`` and the gateway write.
        windows: one row per window when asked for, else ``None``.
        model_path: the exported model used.
    """

    recordings: Any
    windows: Any
    model_path: Path

    @property
    def decisions(self) -> dict[str, str]:
        """``{recording path: decision}`` (a novelty detector's: ``alarm`` or ``healthy``)."""
        frame = self.recordings
        if "decision" in frame:
            values = list(frame["decision"])
        else:
            values = ["alarm" if a else "healthy" for a in frame["alarm"]]
        return dict(zip(frame["path"], values, strict=True))


def run_prediction(
    model_path: str | os.PathLike,
    data_path: str | os.PathLike,
    hop: int | None = None,
    batch_size: int = 64,
    keep_windows: bool = False,
    rpm: float | None = None,
) -> PredictionResult:
    """Decide every recording under ``data_path`` with an exported ONNX model (no torch needed).

    The same per-recording decision, confidence and ``unknown`` as ``predict`` and
    ``python -m damage_lightning.deploy`` (``damage_lightning.deploy.predict``). A model whose
    BatchNorm statistics are adapted to the target machine is exported with
    ``export --ckpt_path ... --adapt PATH`` first (the ONNX model itself cannot be re-estimated).

    Args:
        model_path: a ``model.onnx`` written by ``fit`` or ``export``.
        data_path: a recording or a folder of recordings.
        hop: step between windows (default: the model's).
        batch_size: windows per inference call.
        keep_windows: also return one row per window.
        rpm: shaft speed in rpm for a model with order spectra (``data.order``), used for
            recordings whose manifest row gives none in the model's speed column.

    Raises:
        DataValidationError: a bad model or recording (or a missing speed), named with the
            reason.
    """
    from damage_lightning.deploy.predict import predict

    for path, what in ((model_path, "model"), (data_path, "data path")):
        if not Path(path).exists():
            raise DataValidationError(Problem(str(path), "", f"{what} does not exist"))
    result = predict(
        model_path, data_path, hop=hop, batch_size=batch_size, keep_windows=keep_windows, rpm=rpm
    )
    return PredictionResult(result.recordings, result.windows, Path(model_path))


def run_cv(
    data_path: str | os.PathLike | None,
    save_dir: str | os.PathLike,
    by: str,
    model_type: Literal["cnn", "resnet", "bearing"] = "cnn",
    config: str | os.PathLike | None = None,
    *,
    val_rule: Literal["same", "column", "last_block"] | None = None,
    val_by: str | None = None,
    k: int | None = None,
    bins: int | None = None,
    name: str | None = None,
    baseline: bool = True,
    report: bool = True,
    **overrides: Any,
) -> CVResult:
    """Cross-validate over the manifest column ``by``: the CLI's ``cv``, one ``fit`` per fold.

    Args:
        data_path: folder of recordings with a manifest; ``None`` uses the built-in data.
        save_dir: where the cv folder is created (``trainer.default_root_dir``).
        by: the column left out one value at a time (or ``recording``).
        model_type: ``cnn``, ``resnet`` or ``bearing`` (selects ``configs/<model_type>.yaml``;
            ``bearing`` is the recommended config for rotating machinery, whose model section
            is not a CNN's, so it cannot be stacked on ``cnn.yaml`` as ``config``).
        config: an extra YAML config applied after the model's own.
        val_rule: ``same`` (default; ``column`` when ``val_by`` is given) or ``last_block``.
        val_by: the column whose values validate (``val_rule="column"``).
        k: group the values into ``k`` folds.
        bins: cut a numeric ``by`` into this many quantile bins.
        name: the cv folder's name (default ``cv-<by>``); the same name resumes.
        baseline: also score the log-Welch PSD nearest-centroid baseline.
        report: write ``cv_summary.png`` and ``cv_report.pdf``.
        **overrides: any fit option, as for :func:`run_training`.

    Returns:
        The cv folder, the per-fold results, the mean and sd of each figure, and the files.
    """
    from damage_lightning.cv import CVSettings, run

    settings = CVSettings(
        by=by,
        val_rule=val_rule or ("column" if val_by is not None else "same"),
        val_by=val_by,
        k=k,
        bins=bins,
        name=name,
        baseline=baseline,
        report=report,
    )
    return run(settings, _fit_args(data_path, save_dir, model_type, config, overrides))


def run_cnn(
    data_path: str | os.PathLike | None, save_dir: str | os.PathLike, **kwargs: Any
) -> TrainingResult:
    """``run_training`` with the CNN."""
    return run_training(data_path, save_dir, model_type="cnn", **kwargs)


def run_resnet(
    data_path: str | os.PathLike | None, save_dir: str | os.PathLike, **kwargs: Any
) -> TrainingResult:
    """``run_training`` with the ResNet."""
    return run_training(data_path, save_dir, model_type="resnet", **kwargs)


__all__ = [
    "CVResult",
    "OutputLocationError",
    "PredictionResult",
    "TrainingResult",
    "run_cnn",
    "run_cv",
    "run_prediction",
    "run_resnet",
    "run_training",
]
