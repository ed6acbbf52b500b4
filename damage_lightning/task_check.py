"""Before any model is built: does the configured task fit the data's classes?

A classifier needs two classes or more; data of one class (or a ``healthy_label``) are for the
novelty detector. Checked in the CLI's ``before_instantiate_classes``, from the file listing only
(discovery reads no recording), so the user reads one line that says what to do instead of a
traceback from a model built with one class.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.discovery import discover_with_warnings

NOVELTY_HINT = (
    "to train a novelty detector on healthy recordings only, use --config configs/novelty.yaml"
)


def _task_class(model: Any) -> type | None:
    class_path = getattr(model, "class_path", None)
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def check_task_fits_data(cfg: Any) -> None:
    """Refuse a classifier on one-class data, or with ``data.healthy_label`` set.

    Args:
        cfg: the parsed configuration of one subcommand (``model``, ``data`` sections).

    Raises:
        DataValidationError: one problem that names the data and says to use the novelty config.
    """
    task = _task_class(cfg.get("model"))
    data = cfg.get("data")
    if task is None or data is None or getattr(task, "healthy_only", True):
        return
    if getattr(data, "healthy_label", None) is not None:
        raise DataValidationError(
            Problem(
                "data.healthy_label",
                "",
                f"{data.healthy_label!r} is set, but a classifier trains on every class; "
                f"{NOVELTY_HINT}, or leave healthy_label out",
            )
        )
    data_dir = getattr(data, "data_dir", None)
    if not data_dir:
        return  # the built-in datasets have five classes
    root = Path(data_dir).expanduser()
    specs, _ = discover_with_warnings(root, getattr(data, "manifest", None))
    labels = sorted({s.label for s in specs})
    if len(labels) == 1:
        raise DataValidationError(
            Problem(
                str(root),
                "",
                f"only one class ('{labels[0]}') found; a classifier needs at least two classes: "
                f"{NOVELTY_HINT}",
            )
        )
