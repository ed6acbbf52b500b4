"""Checkpoints: rebuild a trained task and its front end, or the deployable module, from a file."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.export.deployable import DeployableModel
from damage_lightning.export.spec import SECTION, ExportSpec

if TYPE_CHECKING:
    from damage_lightning.tasks.base import BaseTask


def _bad_ckpt(path: Path, reason: str) -> DataValidationError:
    return DataValidationError([Problem(str(path), "", reason)])


def _model_class(path: Path, class_path: Any) -> type:
    """Import the model class named in a checkpoint, accepting only task (BaseTask) subclasses.

    The class path comes from a file, so it is not trusted: it must name an importable class
    that subclasses ``damage_lightning.tasks.BaseTask``; anything else is refused before it is
    called.
    """
    from damage_lightning.tasks.base import BaseTask

    if not isinstance(class_path, str) or "." not in class_path:
        raise _bad_ckpt(path, f"model_class_path {class_path!r} is not 'package.module.Class'")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _bad_ckpt(path, f"cannot import the model's module {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseTask)):
        raise _bad_ckpt(
            path,
            f"model_class_path {class_path!r} is not a damage_lightning task (not a "
            "DamageClassifier subclass or other BaseTask subclass); refusing to build it",
        )
    return cls


def load_from_checkpoint(
    ckpt_path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[BaseTask, nn.Module, ExportSpec]:
    """Rebuild a trained model and its front end from a checkpoint alone (e.g. in a notebook).

    The checkpoint is read with ``torch.load(..., weights_only=True)``: it may hold only tensors
    and plain values, never pickled objects, so loading a file cannot run code from it. The
    model class named in it must subclass ``DamageClassifier``; it is built from the saved
    hyperparameters and its weights are loaded strictly.

    Args:
        ckpt_path: a checkpoint written by a damage_lightning run (``checkpoints/best.ckpt``).
        map_location: device for the model and front end.

    Returns:
        ``(model, frontend, spec)``: the model and ``SpectrogramFrontend`` (with its
        normalisation statistics) in eval mode, and the checkpoint's :class:`ExportSpec`
        (classes, channels, sample rate, window, hop, task class and front-end settings).

    Raises:
        DataValidationError: when the file is missing, unsafe or not a damage_lightning
            checkpoint, or its weights do not fit the model it names.
    """
    from damage_lightning.data.frontend import SpectrogramFrontend

    path = Path(ckpt_path)
    if not path.is_file():
        raise _bad_ckpt(path, "checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise _bad_ckpt(
            path,
            "cannot be read as a weights-only checkpoint (it is damaged, or it holds pickled "
            f"Python objects that are not loaded for safety): {exc}",
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(SECTION), dict):
        raise _bad_ckpt(
            path, "no 'damage_lightning' section: not a checkpoint written by damage_lightning"
        )
    try:
        spec = ExportSpec.from_checkpoint(ckpt[SECTION])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_ckpt(path, f"incomplete checkpoint: {exc}") from exc
    if "state_dict" not in ckpt:
        raise _bad_ckpt(path, "incomplete checkpoint, missing ['state_dict']")

    cls = _model_class(path, spec.model_class_path)
    # LightningCLI adds bookkeeping entries ("_class_path", "_instantiator") that are not
    # constructor arguments.
    hparams = {
        k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")
    }
    try:
        model = cls(**hparams)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise _bad_ckpt(path, f"the weights do not fit {cls.__name__}: {exc}") from exc

    try:
        frontend = SpectrogramFrontend(**spec.frontend_settings)
        # Derived buffers (windows, filter banks) come from the settings; the checkpoint holds
        # the fitted statistics, and nothing it holds may go unused.
        result = frontend.load_state_dict(dict(spec.frontend_state), strict=False)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise _bad_ckpt(path, f"cannot rebuild the front end: {exc}") from exc
    if result.unexpected_keys:
        raise _bad_ckpt(path, f"unknown front-end state {sorted(result.unexpected_keys)}")

    model = model.to(map_location).eval()
    frontend = frontend.to(map_location).eval()
    return model, frontend, spec


def deployable_from_checkpoint(
    ckpt_path: str | os.PathLike,
) -> tuple[DeployableModel, ExportSpec]:
    """Build the deployable (front end + network) module from a checkpoint, on CPU.

    Args:
        ckpt_path: a checkpoint written by a damage_lightning run.

    Returns:
        ``(deployable, spec)``; ``spec.metadata(**deployable.metadata_extra)`` is what its
        exports carry.
    """
    model, frontend, spec = load_from_checkpoint(ckpt_path, map_location="cpu")
    return model.deployable(frontend).eval(), spec
