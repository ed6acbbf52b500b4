"""The command line: LightningCLI (fit/validate/test/predict/export); data, report, compare, tune.

``main(args=None)`` is what ``python -m damage_lightning`` runs; tests call ``main([...])``
in-process. Bad input ends with one or two lines on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import sys
import time
import typing
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from damage_lightning.artifacts import (
    TMP_PREFIX,
    atomic_write_text,
    capture_output,
    check_writable,
)
from damage_lightning.callbacks import AdaptBatchNorm, RunArtifacts
from damage_lightning.config_files import resolve_config_args
from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.errors import (
    ConfigError,
    DataValidationError,
    ExportVerificationError,
    OutputLocationError,
    Problem,
)
from damage_lightning.evaluation.attribution import AttributionOptions
from damage_lightning.report.options import MODEL_ENV, ReportOptions
from damage_lightning.run import finalize_run, write_predictions
from damage_lightning.task_check import check_task_fits_data
from damage_lightning.tasks.base import BaseTask, TrainingDivergedError
from damage_lightning.tracking import attach_run_files, run_loggers

RUN_NAME_ENV = "DAMAGE_LIGHTNING_RUN_NAME"

# The run folder already holds config.yaml when the logger starts; its "not empty" note is noise.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
# Lightning 2.6 calls a torch 2.11 API that torch marks deprecated; nothing for a user to do.
warnings.filterwarnings(
    "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
)
DEFAULT_ROOT = "models"
ATTRIBUTION_HELP = {
    "enabled": "fit: write attribution.json (which Hz bands of which channels drive each class).",
    "method": "integrated_gradients (every spectrogram row) or occlusion (bands of band_hz).",
    "windows_per_class": "Test windows attributed per class.",
    "steps": "Integration steps of integrated_gradients.",
    "band_hz": "Band width in Hz of the report's heatmap (default: at most 32 bands).",
    "reference": "Healthy class of the baseline (default: one named undamaged, healthy, ...).",
}
USER_ERRORS = (DataValidationError, OutputLocationError, ExportVerificationError, ConfigError)
ADAPT_SUBCOMMANDS = ("test", "predict", "export")


class DamageTrainer(Trainer):
    """Lightning's Trainer with an ``export`` subcommand for the CLI."""

    def export(
        self,
        model: BaseTask,
        datamodule: DamageDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        quantize: Literal["int8"] | None = None,
    ) -> dict[str, Any]:
        """Export a checkpoint to ONNX and TorchScript (waveform in), verified against eager.

        Args:
            model: the model described by the config (its weights come from ``ckpt_path``).
            datamodule: the config's data module: the checkpoint carries the front end; only
                ``quantize`` (calibration and test windows) and ``--adapt`` (the target
                recordings, read with the data's channels and rate) read data.
            ckpt_path: checkpoint to export: ``best``, ``last`` or a file.
            weights_only: accepted so a run's ``config.yaml`` (written by ``fit``) can be reused;
                checkpoints are always loaded with ``weights_only=True``.
            quantize: ``int8`` also writes ``model.int8.onnx`` (static quantisation calibrated
                on the training split, verified on the test split against the float model).
        """
        from damage_lightning.export import deployable_from_checkpoint, export_all

        if not ckpt_path:
            raise OutputLocationError("export needs --ckpt_path (best, last or a checkpoint file)")
        out_dir = Path(
            getattr(self, "_export_dir", None) or Path(ckpt_path).parent.parent / "export"
        )
        check_writable(out_dir)
        deployable, spec = deployable_from_checkpoint(ckpt_path)
        adapt = getattr(self, "_adapt", None)
        if adapt:
            _adapt_deployable(deployable, datamodule, spec, adapt)
        int8 = None
        if quantize == "int8":
            int8 = _quantization_data(datamodule, spec)
        metadata = spec.metadata(**deployable.metadata_extra)
        result = export_all(deployable, out_dir, metadata, int8=int8)
        for kind, entry in result.items():
            print(f"{kind}: {entry['path']}")
        return result


def _adapt_deployable(
    deployable: Any, datamodule: DamageDataModule | None, spec: Any, path: str
) -> None:
    """``export --adapt``: the exported model carries BatchNorm statistics of ``path``'s windows.

    The windows are read as ``predict`` reads them (the config's data settings give channels,
    rate and window, which must be the checkpoint's), through the checkpoint's front end. The
    export metadata names the adaptation (``batchnorm_adapted``).
    """
    from damage_lightning.data.order import refuse_order
    from damage_lightning.tasks.adapt import adapt_batchnorm

    _check_data_matches(datamodule, spec, "export --adapt")
    try:
        refuse_order(deployable, "export --adapt")
    except ValueError as exc:
        raise DataValidationError(Problem(path, "", str(exc))) from None
    assert datamodule is not None
    loader = datamodule.recording_windows(path)
    try:
        done = adapt_batchnorm(deployable, (batch[0].cpu() for batch in loader))
    except ValueError as exc:
        raise DataValidationError(Problem(path, "", f"--adapt: {exc}")) from None
    deployable.metadata_extra["batchnorm_adapted"] = {
        "path": str(path),
        "layers": done.layers,
        "windows": done.windows,
    }
    print(
        f"adapt: BatchNorm statistics of {done.layers} layers re-estimated on {done.windows} "
        f"windows of {path}"
    )


def _check_data_matches(datamodule: DamageDataModule | None, spec: Any, what: str) -> None:
    """The config's data must read windows the checkpoint's network was trained on."""
    if datamodule is None:
        raise OutputLocationError(f"{what} needs the data: pass the run's --config")
    if datamodule.channels != spec.channels or datamodule.window != spec.window:
        raise DataValidationError(
            Problem(
                str(datamodule.data_root),
                "",
                f"the checkpoint reads windows of {spec.window} samples of {spec.channels}; "
                f"the data give {datamodule.window} samples of {datamodule.channels}",
            )
        )


def _quantization_data(datamodule: DamageDataModule | None, spec: Any) -> Any:
    """Calibration and test windows for ``export --quantize int8`` from the config's data."""
    from damage_lightning.export import QuantizationData

    _check_data_matches(datamodule, spec, "export --quantize int8")
    assert datamodule is not None
    # The checkpoint's normalisation, not a refit on these data.
    datamodule.restore_frontend_state(spec.frontend_state, spec.class_names)
    return QuantizationData.from_datamodule(datamodule)


def _check_adapt(subcommand: str, adapt: str | None) -> None:
    """Refuse ``--adapt`` where it means nothing, or a path that is not there, before any work."""
    if not adapt:
        return
    if subcommand not in ADAPT_SUBCOMMANDS:
        raise DataValidationError(
            Problem(
                adapt,
                "",
                f"--adapt applies to {', '.join(ADAPT_SUBCOMMANDS)} of a trained checkpoint, "
                f"not to {subcommand}",
            )
        )
    if not Path(adapt).expanduser().exists():
        raise DataValidationError(
            Problem(adapt, "", "--adapt: no such file or folder of target recordings")
        )


def _check_training_length(subcommand: str, trainer: Any) -> None:
    """Refuse a ``fit`` that would train nothing (and then test and export untrained weights)."""
    if subcommand != "fit":
        return
    for name in ("max_epochs", "max_steps", "limit_train_batches"):
        value = trainer.get(name)
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ConfigError(
                f"invalid setting: trainer.{name} is 0: fit would train nothing and then test "
                "and export an untrained model; give at least 1 (or use the export "
                "subcommand on a trained checkpoint)"
            )


def _check_order_exports(subcommand: str, cfg: Any) -> None:
    """Refuse, before training, what cannot give a model with order spectra its speed.

    The int8 export and the novelty detector have no shaft-speed input; finding that out at
    export, after the whole training, would waste the run.
    """
    data = cfg.get("data")
    if data is None or not data.get("order") or subcommand not in ("fit", "export"):
        return
    export = cfg.get("export")
    quantize = export.get("quantize") if export is not None else cfg.get("quantize")
    if quantize == "int8":
        raise DataValidationError(
            Problem(
                "command line",
                "--export.quantize int8" if subcommand == "fit" else "--quantize int8",
                "the int8 export has no shaft speed input, and data.order: true makes the model "
                "need one; leave out one of the two",
            )
        )
    model = cfg.get("model")
    class_path = model.get("class_path") if hasattr(model, "get") else None
    if subcommand == "fit" and class_path and _is_novelty_task(str(class_path)):
        raise DataValidationError(
            Problem(
                "command line",
                "--data.order true",
                f"the novelty detector ({class_path}) has no shaft speed input; train it "
                "without data.order",
            )
        )


def _is_novelty_task(class_path: str) -> bool:
    """Whether ``class_path`` names the novelty task or a subclass (``False`` if unknown)."""
    import importlib

    from damage_lightning.tasks.novelty import NoveltyTask

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, NoveltyTask)


def _is_rank_zero() -> bool:
    # Environment, not the trainer: this runs before the trainer exists (DDP workers inherit it).
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _short_model_name(class_path: str) -> str:
    name = class_path.rsplit(".", 1)[-1]
    name = re.sub(r"(Classifier|Model|Task)$", "", name) or name
    return name.lower()


def _latest_run(root: Path) -> Path | None:
    runs = [p.parent.parent for p in root.glob("*/checkpoints/last.ckpt")]
    return max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime, default=None)


def _check_checkpoint(file: Path) -> None:
    """Refuse a checkpoint that cannot be loaded with ``weights_only=True``, before any work.

    Lightning's own resume loading (``trainer.fit(ckpt_path=...)``) passes ``weights_only=None``,
    which torch 2.6+ treats as ``True``; checking here turns torch's long unpickling error into
    one line naming the file, before data are read or a run folder is touched.
    """
    import torch

    try:
        torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(
            Problem(
                str(file),
                "",
                "cannot be loaded as a weights-only checkpoint (damaged, or it holds pickled "
                f"Python objects, which are never loaded for safety): {first}",
            )
        ) from None


def _first_cause(exc: BaseException) -> str:
    """The message of the exception at the bottom of ``exc``'s chain of causes, on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(str(exc).split()) or type(exc).__name__


def _remove_stale_temp_files(run_dir: Path) -> None:
    # A run killed in the middle of an atomic write leaves its temporary file; the resumed run
    # rewrites every such file, so the leftovers are only clutter that looks like data.
    for path in run_dir.rglob(f"{TMP_PREFIX}*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()


class DamageCLI(LightningCLI):
    """LightningCLI with run folders, argument links from the data, export and reporting."""

    def __init__(
        self, *args: Any, exit_stack: contextlib.ExitStack | None = None, **kwargs: Any
    ) -> None:
        self.run_dir: Path | None = None
        self._new_run_dir_made = False
        self._exit_stack = exit_stack
        self.started = time.time()
        kwargs.setdefault("model_class", BaseTask)
        kwargs.setdefault("datamodule_class", DamageDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("trainer_class", DamageTrainer)
        kwargs.setdefault("save_config_callback", None)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault(
            "parser_kwargs",
            {
                "default_env": False,
                "description": "Train, evaluate, export and report vibration damage classifiers.",
                "epilog": "More commands: 'report --run_dir DIR' (re)writes a run's PDF "
                "report; "
                "'data synth --out DIR' writes the built-in simulated dataset as CSV; "
                "'compare RUN ...' tabulates runs; 'tune --config ...' runs an Optuna search; "
                "'cv --config ... --cv.by COLUMN' cross-validates over a manifest column.",
            },
        )
        try:
            super().__init__(*args, **kwargs)
        except USER_ERRORS:
            self._discard_unstarted_run()
            raise

    def _discard_unstarted_run(self) -> None:
        # Bad data stops a fit before anything is trained: the folder this call made holds only
        # the log of that failure, and would block rerunning the same --run_name once the data
        # are fixed. A folder that existed before, or that holds a checkpoint, is kept.
        run_dir = self.run_dir
        if not self._new_run_dir_made or run_dir is None or not _is_rank_zero():
            return
        if (run_dir / "checkpoints").exists():
            return
        shutil.rmtree(run_dir, ignore_errors=True)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands plus ``export``."""
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Run naming, output paths, report options and links from the data into the model."""
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Run folder name under trainer.default_root_dir (default <model>-<timestamp>).",
        )
        parser.add_argument(
            "--output",
            type=str | None,
            default=None,
            help="predict: folder for the prediction CSVs; export: folder for the exported files.",
        )
        parser.add_argument(
            "--adapt",
            type=str | None,
            default=None,
            help="test, predict, export: first re-estimate the network's BatchNorm statistics on "
            "the unlabelled recordings at this path (folder or file; many windows of the target "
            "machine in normal operation). It adapts to the target's data, it learns no labels; "
            "test and predict use it in memory, export writes the adapted model.",
        )
        parser.add_argument(
            "--rpm",
            type=float | None,
            default=None,
            help="predict: shaft speed in rpm of recordings whose manifest gives none, for a model "
            "with order spectra (the same as --data.predict_rpm).",
        )
        parser.add_argument(
            "--report.enabled",
            type=bool,
            default=ReportOptions.enabled,
            help="Write the PDF report.",
        )
        parser.add_argument(
            "--report.llm",
            type=bool,
            default=ReportOptions.llm,
            help="Ask Claude for the analysis.",
        )
        parser.add_argument(
            "--report.model",
            type=str | None,
            default=ReportOptions.model,
            help=f"Claude model (default: ${MODEL_ENV} or a current Sonnet).",
        )
        parser.add_argument(
            "--report.timeout",
            type=float,
            default=ReportOptions.timeout,
            help="Overall LLM time limit, s.",
        )
        parser.add_argument(
            "--report.max_retries",
            type=int,
            default=ReportOptions.max_retries,
            help="LLM retries within the limit.",
        )
        for name, kind in typing.get_type_hints(AttributionOptions).items():
            parser.add_argument(
                f"--attribution.{name}",
                type=kind,
                default=getattr(AttributionOptions, name),
                help=ATTRIBUTION_HELP[name],
            )
        parser.add_argument(
            "--export.quantize",
            type=Literal["int8"] | None,
            default=None,
            help="fit: also export model.int8.onnx (export: same as --quantize).",
        )
        for attr in ("num_classes", "in_channels", "input_shape", "class_names"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")
        parser.set_defaults({"trainer.default_root_dir": DEFAULT_ROOT})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check the task fits the data's classes (before the seed or any model)."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub in ("fit", "validate", "test"):
            check_task_fits_data(self.config[sub])

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the hyperparameters of a --ckpt_path file here (torch.load with
        # weights_only=True); checking first turns an unsafe or damaged file into one line that
        # names it.
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            _check_checkpoint(Path(ckpt))
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        """Build the data module, model and trainer; a value they refuse is a ConfigError.

        The classes check their arguments (a window of -5 samples, a dropout of 2, an
        accelerator this machine lacks) with ``ValueError`` or Lightning's
        ``MisconfigurationException``, which jsonargparse may wrap; the message of the first
        cause names the setting, and becomes one line instead of a traceback.
        """
        try:
            super().instantiate_classes()
        except USER_ERRORS:
            raise
        except (ValueError, MisconfigurationException) as exc:
            raise ConfigError(f"invalid setting: {_first_cause(exc)}") from exc

    # ------------------------------------------------------------------ run folder
    def before_instantiate_classes(self) -> None:
        """Decide the run folder before anything is built, and check it can be written."""
        cfg = self.config[self.subcommand]
        root = Path(cfg.trainer.default_root_dir or DEFAULT_ROOT).expanduser()
        ckpt = cfg.get("ckpt_path")
        run_dir: Path | None = None
        if ckpt in ("best", "last"):
            run_dir = root / cfg.run_name if cfg.run_name else _latest_run(root)
            if run_dir is None:
                raise OutputLocationError(
                    f"{root}: no run with checkpoints/last.ckpt to take --ckpt_path {ckpt} from; "
                    "pass --run_name or a checkpoint file"
                )
            file = run_dir / "checkpoints" / f"{ckpt}.ckpt"
            if not file.is_file():
                raise OutputLocationError(f"{file}: checkpoint not found")
            cfg.ckpt_path = str(file)
        elif ckpt:
            file = Path(ckpt).expanduser()
            if not file.is_file():
                raise OutputLocationError(f"{file}: checkpoint not found")
            if file.parent.name == "checkpoints":
                run_dir = file.parent.parent
        if cfg.get("ckpt_path"):
            _check_checkpoint(Path(cfg.ckpt_path))
        _check_adapt(self.subcommand, cfg.get("adapt"))
        _check_training_length(self.subcommand, cfg.trainer)
        _check_order_exports(self.subcommand, cfg)
        if cfg.get("rpm") is not None:
            cfg.data.predict_rpm = cfg.rpm
        if run_dir is None and self.subcommand == "fit":
            run_dir = self._new_run_dir(root, cfg)
        self.run_dir = run_dir
        self._new_run_dir_made = (
            run_dir is not None and self.subcommand == "fit" and not run_dir.exists()
        )
        if run_dir is not None and self.subcommand in ("fit", "export", "predict"):
            check_writable(run_dir)
        if run_dir is not None and self.subcommand == "fit" and ckpt and _is_rank_zero():
            _remove_stale_temp_files(run_dir)
        if run_dir is not None:
            cfg.trainer.default_root_dir = str(run_dir)
            os.environ[RUN_NAME_ENV] = run_dir.name
            if self.subcommand == "fit" and self._exit_stack is not None and _is_rank_zero():
                # Everything printed from here on also lands in the run's training_log.txt.
                self._exit_stack.enter_context(capture_output(run_dir / "training_log.txt"))

    def _new_run_dir(self, root: Path, cfg: Any) -> Path:
        inherited = os.environ.get(RUN_NAME_ENV) if "LOCAL_RANK" in os.environ else None
        if inherited:
            # A DDP worker process: rank zero chose (and created) the folder already.
            return root / inherited
        if cfg.run_name:
            run_dir = root / cfg.run_name
            if run_dir.exists() and any(run_dir.iterdir()):
                raise OutputLocationError(
                    f"{run_dir}: a run folder of this name exists; choose another --run_name, "
                    "or resume it with --ckpt_path"
                )
            return run_dir
        name = f"{_short_model_name(cfg.model.class_path)}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir, n = root / name, 1
        while run_dir.exists():
            n += 1
            run_dir = root / f"{name}-{n}"
        return run_dir

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Log to the run folder (CSV, TensorBoard) and checkpoint into its ``checkpoints/``."""
        if self.run_dir is not None:
            configured = self.config_init[self.subcommand].trainer.get("logger")
            kwargs["logger"] = run_loggers(self.run_dir, configured)
        trainer = super().instantiate_trainer(**kwargs)
        if self.run_dir is not None:
            for cb in trainer.checkpoint_callbacks:
                if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                    cb.dirpath = str(self.run_dir / "checkpoints")
            if self.subcommand == "fit" and not any(
                isinstance(cb, RunArtifacts) for cb in trainer.callbacks
            ):
                trainer.callbacks.append(RunArtifacts(self.run_dir))
        adapt = self.config[self.subcommand].get("adapt")
        if adapt and self.subcommand in ("test", "predict"):
            trainer.callbacks.append(AdaptBatchNorm(adapt))
        return trainer

    # ----------------------------------------------------------------- subcommands
    def before_fit(self) -> None:
        """Save the resolved config into the run folder (rank zero, atomically)."""
        assert self.run_dir is not None
        if _is_rank_zero():
            text = self._parser("fit").dump(self.config["fit"], skip_none=False)
            atomic_write_text(self.run_dir / "config.yaml", text)

    def after_fit(self) -> None:
        """Test with the best checkpoint, then write the model card, exports and report."""
        trainer, model, dm = self.trainer, self.model, self.datamodule
        if trainer.interrupted:
            return
        best = ""
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.best_model_path:
                best = cb.best_model_path
                break
        _fit_after_training(trainer, model, dm, best)
        trainer.test(model, datamodule=dm, ckpt_path=best or None)
        if not trainer.is_global_zero:
            return
        assert self.run_dir is not None
        report = self.config["fit"].report
        finalize_run(
            trainer,
            model,
            dm,
            self.run_dir,
            best_checkpoint=best,
            seed=self.config["fit"].seed_everything,
            started=self.started,
            report=report.as_dict() if hasattr(report, "as_dict") else dict(report),
            quantize=self.config["fit"].export.quantize,
            attribution=_as_dict(self.config["fit"].attribution),
        )
        attach_run_files(trainer.loggers, self.run_dir)

    def predict(self, **kwargs: Any) -> None:
        """Predict and write per-window and per-recording CSVs."""
        kwargs["return_predictions"] = True
        outputs = self.trainer.predict(**kwargs)
        if not self.trainer.is_global_zero or not outputs:
            return
        out = self.config["predict"].output
        out_dir = Path(out) if out else (self.run_dir or Path.cwd())
        paths = write_predictions(outputs, self.datamodule, out_dir, model=self.model)
        for p in paths:
            print(f"predictions: {p}")

    def export(self, **kwargs: Any) -> None:
        """Export ``--ckpt_path`` (into ``--output`` or the run's ``export/``)."""
        self.trainer._export_dir = self.config["export"].output  # type: ignore[attr-defined]
        self.trainer._adapt = self.config["export"].adapt  # type: ignore[attr-defined]
        kwargs["quantize"] = kwargs.get("quantize") or self.config["export"].export.quantize
        self.trainer.export(**kwargs)


def _fit_after_training(trainer: Trainer, model: Any, dm: DamageDataModule, best: str) -> None:
    """Calibrate the best weights (and fit their distance gate), into ``best.ckpt``.

    The temperature is fitted on the validation split, the distance gate on the training and
    validation splits (``calibrate``, ``abstain_distance``). ``test`` and the exports then use
    them; every rank fits the same values (each sees whole splits), rank zero rewrites the file.
    """
    import torch

    from damage_lightning.artifacts import atomic_write_bytes

    hp = model.hparams
    if not (getattr(hp, "calibrate", False) or getattr(hp, "abstain_distance", False)):
        return
    checkpoint = None
    if best:
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    fitted: list[str] = []
    try:
        if hp.calibrate:
            fit = model.calibrate(dm)
            print(
                f"calibration: temperature {fit['temperature']:.3f} (validation NLL "
                f"{fit['val_nll_before']:.4f} -> {fit['val_nll_after']:.4f})"
            )
            fitted.append("temperature")
        if getattr(hp, "abstain_distance", False):
            gate = model.fit_distance_gate(dm)
            print(
                f"distance gate: threshold {gate['threshold']:.1f} (largest of "
                f"{gate['val_recordings']} validation recordings)"
            )
            fitted += ["feature_means", "feature_precision", "distance_threshold"]
    except ValueError as exc:  # e.g. no validation windows: left as it is
        print(f"calibration or distance gate skipped: {exc}")
    if checkpoint is not None and fitted and trainer.is_global_zero:
        state = model.state_dict()
        for key in fitted:
            checkpoint["state_dict"][key] = state[key].detach().cpu().clone()
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(best), buffer.getvalue())


def _as_dict(namespace: Any) -> dict[str, Any]:
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace)


def _data_command(argv: list[str]) -> int:
    if argv[:1] != ["synth"]:
        print(
            "usage: python -m damage_lightning data synth --out DIR [--seed N] "
            "[--recordings-per-class N] [--scenario classes|monitoring]",
            file=sys.stderr,
        )
        return 2
    from damage_lightning.data.synthetic import main_synth

    return main_synth(argv[1:])


def _report_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m damage_lightning report",
        description="Write (or rewrite) the PDF report of an existing run folder.",
    )
    parser.add_argument("--run_dir", required=True, help="the run folder")
    parser.add_argument("--no-llm", dest="llm", action="store_false", help="offline analysis only")
    parser.add_argument("--llm-model", default=ReportOptions.model, help="Claude model name")
    parser.add_argument(
        "--timeout", type=float, default=ReportOptions.timeout, help="overall LLM time limit, s"
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=ReportOptions.max_retries,
        help="LLM retries within the limit",
    )
    ns = parser.parse_args(argv)
    run_dir = Path(ns.run_dir)
    if not (run_dir / "model_info.json").is_file():
        raise OutputLocationError(f"{run_dir}: not a run folder (no model_info.json)")
    from damage_lightning.report.build import generate_report

    result = generate_report(
        run_dir, llm=ns.llm, llm_model=ns.llm_model, timeout=ns.timeout, max_retries=ns.max_retries
    )
    print(f"analysis: {result.analysis_source}")
    if result.fallback_reason:
        print(f"  ({result.fallback_reason})")
    print(f"report: {result.pdf_path}")
    return 0


def main(args: list[str] | None = None) -> int:
    """Run the command line; ``args`` defaults to ``sys.argv[1:]``.

    A ``--config NAME.yaml`` that does not exist where the user stands is the shipped config of
    that name (``damage_lightning.config_files``); the substitution is announced on stderr.
    Returns 0 on success. Bad input (a config file that is neither there nor shipped, too), an
    unusable output folder or a failed export verification print a short message and raise
    ``SystemExit(2)``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv[:1] == ["data"]:
            return _data_command(argv[1:])
        if argv[:1] == ["report"]:
            return _report_command(argv[1:])
        resolved = resolve_config_args(argv)
        if args is None and resolved != argv:
            # LightningCLI reads sys.argv itself when args is None (see below).
            sys.argv[1:] = resolved
        argv = resolved
        if argv[:1] == ["compare"]:
            from damage_lightning.compare import main_compare

            return main_compare(argv[1:])
        if argv[:1] == ["tune"]:
            from damage_lightning.tune import main_tune

            return main_tune(argv[1:])
        if argv[:1] == ["cv"]:
            from damage_lightning.cv import main_cv

            return main_cv(argv[1:])
        with contextlib.ExitStack() as stack:
            # args=None when called from the shell: LightningCLI then reads sys.argv itself
            # instead of warning that both were given.
            DamageCLI(args=None if args is None else argv, exit_stack=stack)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDivergedError as exc:
        # Not bad input but a failed run: status 1, and the message rather than a traceback.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return 0
