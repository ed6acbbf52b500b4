"""The ``tune:`` section of a config: the search space and the settings of the search.

``parse_args`` splits ``tune``'s arguments into those settings and the arguments of each trial's
``fit``. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from damage_lightning.errors import DataValidationError, Problem

SCALARS = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of the search space: a CLI option and the values it may take.

    Args:
        name: the option as on the command line, without dashes (``model.init_args.lr``).
        kind: ``float``, ``int`` or ``categorical``.
        low: lower bound (float, int).
        high: upper bound, inclusive (float, int).
        log: sample on a log scale (float, int).
        step: grid step (float, int).
        choices: the values of a categorical dimension (lists are allowed, such as widths).
    """

    name: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @classmethod
    def from_yaml(cls, name: str, spec: Any, source: str) -> ParamSpec:
        """Read ``{low, high[, log, step, type]}`` or ``{choices: [...]}`` of ``tune.space``.

        Raises:
            DataValidationError: a malformed entry, naming the file and the entry.
        """
        where = f"tune.space.{name}"

        def bad(reason: str) -> DataValidationError:
            return DataValidationError(Problem(source, where, reason))

        if not isinstance(spec, dict):
            raise bad("expected a mapping: {low: .., high: ..} or {choices: [..]}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if unknown:
            raise bad(f"unknown keys {sorted(unknown)}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise bad("choices must be a non-empty list")
            return cls(name, "categorical", choices=tuple(choices))
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
            raise bad("low and high must be numbers (or give choices)")
        kind = spec.get("type") or (
            "int" if isinstance(low, int) and isinstance(high, int) else "float"
        )
        if kind not in ("int", "float"):
            raise bad(f"type must be int or float, got {kind!r}")
        if low > high or (spec.get("log") and low <= 0):
            raise bad("needs low <= high (and low > 0 on a log scale)")
        return cls(name, kind, low, high, bool(spec.get("log", False)), spec.get("step"))

    def suggest(self, trial: Any) -> Any:
        """The trial's value of this dimension (a list choice comes back as the list)."""
        if self.kind == "categorical":
            if all(isinstance(c, SCALARS) for c in self.choices):
                return trial.suggest_categorical(self.name, list(self.choices))
            # Optuna stores only scalar choices; lists (layer widths) travel as JSON text.
            text = trial.suggest_categorical(self.name, [json.dumps(c) for c in self.choices])
            return json.loads(text)
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class TuneSettings:
    """How to search; the ``tune:`` section of a config, or ``--tune.KEY VALUE``.

    Args:
        space: the search space (``tune.space`` in YAML), by CLI option name.
        n_trials: finished trials (complete or pruned) the study should hold in all; a resumed
            or second worker runs only what is missing.
        study_name: the study's name and the tune folder under ``trainer.default_root_dir``.
        storage: an Optuna storage URL (default: ``sqlite:///<tune folder>/study.db``).
        seed: the sampler's seed (give each worker its own or none, or they repeat each other).
        timeout: stop starting trials after this many seconds (this worker).
        pruner: ``median`` (Optuna's MedianPruner on ``val_loss`` per epoch) or ``none``.
        startup_trials: trials that finish before pruning starts.
        warmup_epochs: epochs of a trial that are never pruned.
        retrain: retrain the best trial as a complete run folder when the search ends.
    """

    space: dict[str, ParamSpec] = field(default_factory=dict)
    n_trials: int = 20
    study_name: str = "tune"
    storage: str | None = None
    seed: int | None = None
    timeout: float | None = None
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = 3
    warmup_epochs: int = 2
    retrain: bool = True

    @classmethod
    def from_mapping(cls, values: dict[str, Any], sources: dict[str, str]) -> TuneSettings:
        """Check and convert the merged ``tune`` values (``sources`` names where each came from)."""
        out = cls()
        for key, value in values.items():
            src = sources.get(key, "command line")
            if key == "space":
                if not isinstance(value, dict) or not value:
                    raise DataValidationError(Problem(src, "tune.space", "expected a mapping"))
                out.space = {n: ParamSpec.from_yaml(n, s, src) for n, s in value.items()}
                continue
            if key not in _CHECKS:
                known = ", ".join(sorted(["space", *_CHECKS]))
                raise DataValidationError(Problem(src, f"tune.{key}", f"unknown; known: {known}"))
            kind, check = _CHECKS[key]
            if not check(value):
                raise DataValidationError(Problem(src, f"tune.{key}", f"{value!r} is not {kind}"))
            setattr(out, key, value)
        if not out.space:
            raise DataValidationError(
                Problem("configs", "tune.space", "no search space: add a tune: section to a config")
            )
        return out


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# What each setting accepts (beside ``space``), as words for the error and as a test.
_CHECKS: dict[str, tuple[str, Any]] = {
    "n_trials": ("a count", _count),
    "study_name": ("a name", lambda v: isinstance(v, str) and v.strip() != ""),
    "storage": ("a storage URL or null", lambda v: v is None or isinstance(v, str)),
    "seed": ("an integer or null", lambda v: v is None or _count(v)),
    "timeout": (
        "seconds or null",
        lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v > 0),
    ),
    "pruner": ("median or none", lambda v: v in ("median", "none")),
    "startup_trials": ("a count", _count),
    "warmup_epochs": ("a count", _count),
    "retrain": ("true or false", lambda v: isinstance(v, bool)),
}


def parse_args(argv: list[str]) -> tuple[TuneSettings, list[str], Path | None]:
    """Split ``tune`` arguments into the search settings, the fit arguments and the root folder.

    ``tune:`` sections are taken out of the ``--config`` files (later files and ``--tune.KEY``
    options win); the rest of each config goes to ``fit`` unchanged. The root folder is the last
    ``trainer.default_root_dir`` given (``None`` when none is).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    fit_args: list[str] = []
    cli_values: dict[str, Any] = {}
    root: str | None = None
    args = argv[1:] if argv[:1] == ["fit"] else list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, inline = arg.partition("=")
        takes_value = not eq and i + 1 < len(args)
        value = inline if eq else (args[i + 1] if takes_value else "")
        step = 1 if eq else 2
        if key.startswith("--tune."):
            if not eq and not takes_value:
                raise DataValidationError(Problem("command line", key, "needs a value"))
            cli_values[key.removeprefix("--tune.")] = yaml.safe_load(value)
        elif key in ("--config", "-c") and (eq or takes_value):
            config = _read_config(value)
            section = config.pop("tune", None)
            if section is not None:
                if not isinstance(section, dict):
                    raise DataValidationError(Problem(value, "tune", "expected a mapping"))
                values.update(section)
                sources.update(dict.fromkeys(section, value))
                if config:
                    fit_args += ["--config", yaml.safe_dump(config, sort_keys=False)]
            else:
                fit_args += ["--config", value]
            root = (config.get("trainer") or {}).get("default_root_dir") or root
        elif key == "--trainer.default_root_dir" and (eq or takes_value):
            root = value
            fit_args += ["--trainer.default_root_dir", value]
        else:
            fit_args.append(arg)
            step = 1
        i += step
    values.update(cli_values)
    settings = TuneSettings.from_mapping(values, sources)
    return settings, fit_args, Path(root).expanduser() if root else None


def _read_config(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataValidationError(Problem(path, "", f"cannot read the config: {exc}")) from None
    except yaml.YAMLError as exc:
        raise DataValidationError(Problem(path, "", f"not valid YAML: {exc}")) from None
    return data if isinstance(data, dict) else {}
