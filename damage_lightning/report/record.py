"""What the report reads from a run folder, as one typed record (:meth:`RunRecord.load`).

A missing or unreadable file, or one that does not fit its schema, is a gap the report names
rather than a failure; only a folder without any of the run's records is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from damage_lightning.card import (
    HISTORY_FILE,
    MODEL_CARD_FILE,
    JsonRecord,
    ModelCard,
    TrainingHistory,
)
from damage_lightning.data.splits import SplitPlan
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.evaluation.attribution import ATTRIBUTION_FILE, Attribution
from damage_lightning.report.text import clean_text

SPLITS_FILE = "splits.json"
CONFIG_FILE = "config.yaml"
LOG_FILE = "training_log.txt"
LOG_TAIL_LINES = 60
# Only the end of a huge log is read; the report shows its last lines anyway.
LOG_READ_BYTES = 2 << 20


@dataclass
class RunRecord:
    """Everything the report uses from one run folder.

    Args:
        run_dir: the run folder (``None`` for a record built in code).
        run_name: the run's name, cleaned for display.
        card: the model card (``None`` when model_info.json is missing or unreadable).
        history: the training history (empty when training_history.json is missing or unreadable).
        splits: the split assignment of splits.json (``None`` when missing or unreadable).
        config: the resolved configuration of config.yaml (free-form; empty when missing).
        log_lines: the last lines of training_log.txt, as a terminal shows them.
        log_total_lines: lines in the log (``None`` when there is no log).
        missing: one line per file that is missing or unreadable, for the report to name.
        attribution: attribution.json (``None`` when the run has none, or it is unreadable).
    """

    run_dir: Path | None = None
    run_name: str = ""
    card: ModelCard | None = None
    history: TrainingHistory = field(default_factory=TrainingHistory)
    splits: SplitPlan | None = None
    config: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    log_total_lines: int | None = None
    missing: list[str] = field(default_factory=list)
    attribution: Attribution | None = None

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunRecord:
        """Read a run folder.

        Args:
            run_dir: the run folder (``<save_dir>/<run_name>``).

        Raises:
            DataValidationError: the folder does not exist, or neither model_info.json nor
                training_history.json can be read.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            reason = "run folder not found (give the folder of a training run)"
            raise DataValidationError(Problem(str(run_dir), "", reason))
        missing: list[str] = []
        card = _read_record(ModelCard, run_dir / MODEL_CARD_FILE, missing)
        history = _read_record(TrainingHistory, run_dir / HISTORY_FILE, missing)
        if card is None and history is None:
            raise DataValidationError(
                [Problem(str(run_dir), "", f"not a training run folder: {m}") for m in missing]
            )
        splits = _read_splits(run_dir / SPLITS_FILE, missing)
        config = _read_config(run_dir / CONFIG_FILE, missing)
        log_lines, log_total = read_log_tail(run_dir / LOG_FILE)
        if log_total is None:
            missing.append(f"{LOG_FILE}: not found")
        name = (card.run_name if card else None) or config.get("run_name") or run_dir.name
        # Optional (novelty detectors and runs with --attribution.enabled false have none).
        attribution = None
        if (run_dir / ATTRIBUTION_FILE).is_file():
            attribution = _read_record(Attribution, run_dir / ATTRIBUTION_FILE, missing)
        return cls(
            run_dir=run_dir,
            run_name=clean_text(name, newlines=False),
            card=card,
            history=history or TrainingHistory(),
            splits=splits,
            config=config,
            log_lines=log_lines,
            log_total_lines=log_total,
            missing=missing,
            attribution=attribution,
        )


def _gap(path: Path, reason: Any) -> str:
    return f"{path.name}: {clean_text(reason, max_len=160, newlines=False)}"


def _read_record(cls: type[JsonRecord], path: Path, missing: list[str]) -> Any:
    try:
        return cls.read(path)
    except DataValidationError as exc:
        (problem,) = exc.problems
        where = f"{problem.location}: " if problem.location else ""
        missing.append(_gap(path, where + problem.reason))
        return None


def _read_splits(path: Path, missing: list[str]) -> SplitPlan | None:
    if not path.is_file():
        missing.append(f"{path.name}: not found")
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        missing.append(_gap(path, f"could not be read ({exc})"))
        return None
    try:
        return SplitPlan.from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # SplitPlan.from_json (the one reader of splits.json) indexes the document directly, so
        # a document of another shape surfaces as one of these.
        missing.append(_gap(path, f"not a split assignment ({type(exc).__name__}: {exc})"))
        return None


def _read_config(path: Path, missing: list[str]) -> dict[str, Any]:
    if not path.is_file():
        missing.append(f"{path.name}: not found")
        return {}
    import yaml

    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc
        missing.append(_gap(path, f"could not be read ({clean_text(first, max_len=120)})"))
        return {}
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        missing.append(f"{path.name}: not a YAML mapping")
        return {}
    return obj


def read_log_tail(path: Path, n_lines: int = LOG_TAIL_LINES) -> tuple[list[str], int | None]:
    """The last ``n_lines`` lines of a log as a terminal would show them.

    Progress bars rewrite their line with carriage returns; only the last state of such a line
    is kept. Returns the lines and the number of lines read (``None`` when the file is missing).
    """
    if not path.is_file():
        return [], None
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size > LOG_READ_BYTES:
            fh.seek(size - LOG_READ_BYTES)
        raw = fh.read()
    text = raw.decode("utf-8", errors="replace")
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            parts = [p for p in line.split("\r") if p.strip()]
            line = parts[-1] if parts else ""
        lines.append(line)
    if lines and lines[-1] == "":
        lines.pop()
    if size > LOG_READ_BYTES and lines:
        lines.pop(0)  # the first line was cut by the seek
    return lines[-n_lines:], len(lines)
