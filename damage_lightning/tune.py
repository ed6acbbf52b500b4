"""Hyperparameter search: an Optuna study over a YAML search space, one ``fit`` per trial.

``python -m damage_lightning tune --config configs/cnn.yaml --config configs/tune_cnn.yaml``
runs trials through the CLI's own fit path, prunes them on ``val_loss`` (Optuna's Lightning
callback), keeps the study in SQLite (or any Optuna storage URL, shared by several workers),
selects on the best validation loss only, and retrains the best trial as a normal run folder.

The tune folder ``<trainer.default_root_dir>/<study_name>/`` holds ``study.db``, ``trials/``
(one run folder per trial, without test, export or report), ``trials.csv``/``trials.md``,
``search.png``, ``tune_result.json`` and ``best-trial-NNNN/`` (the retrained run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from damage_lightning.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from damage_lightning.card import HISTORY_FILE, MODEL_CARD_FILE, TrainingHistory
from damage_lightning.cli import DEFAULT_ROOT, DamageCLI
from damage_lightning.errors import OutputLocationError
from damage_lightning.runner import override_args
from damage_lightning.search_space import TuneSettings, parse_args

MONITOR = "val_loss"
TRIALS_DIR = "trials"
# A worker that stops sending heartbeats for this long (killed, machine lost) has its running
# trial marked failed and re-queued once with the same parameters.
HEARTBEAT_S = 60
GRACE_S = 180


class _TrialCLI(DamageCLI):
    """The CLI's fit, minus what follows it: a trial never touches the test split."""

    def after_fit(self) -> None:
        """Nothing: testing, export and report belong to the retrained best trial only."""


def _fit(cli_class: type[DamageCLI], args: list[str], **kwargs: Any) -> DamageCLI:
    with warnings.catch_warnings():
        # tune's own command line is in sys.argv; these args are what each fit runs.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        with contextlib.ExitStack() as stack:
            return cli_class(args=args, exit_stack=stack, **kwargs)


def storage_url(settings: TuneSettings, tune_dir: Path) -> str:
    """``--tune.storage``, or the SQLite file ``study.db`` in the tune folder."""
    return settings.storage or f"sqlite:///{(tune_dir / 'study.db').resolve()}"


def open_study(settings: TuneSettings, url: str) -> Any:
    """Create or load the study (``load_if_exists``), so a killed or second worker joins it."""
    import optuna
    import sqlalchemy.exc

    # SQLite serialises writers; workers wait for the lock rather than fail.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if settings.pruner == "median":
        pruner: Any = optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs
        )
    else:
        pruner = optuna.pruners.NopPruner()
    for attempt in range(2):
        try:
            with warnings.catch_warnings():
                # The heartbeat is marked experimental; it re-queues a killed worker's trial.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=1
                    ),
                )
            return optuna.create_study(
                storage=storage,
                study_name=settings.study_name,
                direction="minimize",
                sampler=optuna.samplers.TPESampler(seed=settings.seed),
                pruner=pruner,
                load_if_exists=True,
            )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            # Two workers creating the same new database race on its tables; the second try
            # finds them made.
            if attempt:
                raise OutputLocationError(f"{url}: cannot open the Optuna storage: {exc}") from None
        except (ValueError, ImportError, sqlalchemy.exc.ArgumentError) as exc:
            raise OutputLocationError(f"{url}: cannot open the Optuna storage: {exc}") from None
    raise AssertionError("unreachable")


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def run_trial(trial: Any, settings: TuneSettings, fit_args: list[str], trials_dir: Path) -> float:
    """One trial: the CLI's fit with the trial's values; returns its best ``val_loss``."""
    from optuna_integration import PyTorchLightningPruningCallback

    overrides = {name: spec.suggest(trial) for name, spec in settings.space.items()}
    run_name = f"trial-{trial.number:04d}"
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("run_dir", str(trials_dir / run_name))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    args = ["fit", *fit_args, *override_args(overrides)]
    args += ["--trainer.default_root_dir", str(trials_dir), "--run_name", run_name]
    args += ["--report.enabled", "false"]
    pruning = PyTorchLightningPruningCallback(trial, monitor=MONITOR)
    cli = _fit(_TrialCLI, args, trainer_defaults={"callbacks": [pruning]})
    assert cli.run_dir is not None
    history = TrainingHistory.read(cli.run_dir / HISTORY_FILE)
    if history.best_val_loss is None:
        raise ValueError(f"{cli.run_dir}: the trial logged no {MONITOR}")
    trial.set_user_attr("epochs", len(history.epochs))
    return float(history.best_val_loss)


def retrain_best(best: Any, fit_args: list[str], tune_dir: Path) -> Path:
    """Retrain the best trial as a complete run folder ``best-trial-NNNN`` (tested, exported).

    Kept when already complete; resumed from ``last.ckpt`` when a retrain was killed.
    """
    run_dir = tune_dir / f"best-trial-{best.number:04d}"
    if (run_dir / MODEL_CARD_FILE).is_file():
        return run_dir
    args = ["fit", *fit_args, *override_args(best.user_attrs["overrides"])]
    args += ["--trainer.default_root_dir", str(tune_dir), "--run_name", run_dir.name]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        args += ["--ckpt_path", str(last)]
    elif run_dir.exists():
        # Killed before its first epoch ended: nothing in it to resume or keep.
        shutil.rmtree(run_dir)
    _fit(DamageCLI, args)
    return run_dir


@dataclass(frozen=True)
class TuneResult:
    """The outcome of a search, written as ``tune_result.json``.

    Args:
        study_name: the study.
        storage: its storage URL.
        n_complete: trials that finished.
        n_pruned: trials stopped early by the pruner.
        n_failed: trials that failed (diverged, or lost with a killed worker).
        best_trial: number of the trial with the lowest best ``val_loss``.
        best_val_loss: that value (the only number the selection reads).
        best_overrides: the best trial's values, by CLI option.
        best_run_dir: the retrained run folder (``None`` without ``retrain``).
    """

    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_trial: int | None
    best_val_loss: float | None
    best_overrides: dict[str, Any]
    best_run_dir: str | None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return asdict(self)


def trials_table(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, best ``val_loss``, epochs reported, values, worker."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = t.intermediate_values
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            # Optuna files a pruned trial under its last report; only a complete one has a best.
            "val_loss": t.value if t.state.name == "COMPLETE" else None,
            "last_val_loss": steps[max(steps)] if steps else None,
            "epochs": (max(steps) + 1) if steps else 0,
            "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
            **(t.user_attrs.get("overrides") or {}),
            "worker": t.user_attrs.get("worker"),
        }
        rows.append(row)
    return sorted(rows, key=lambda r: (r["val_loss"] is None, r["val_loss"] or 0.0, r["trial"]))


def write_results(study: Any, tune_dir: Path) -> list[Path]:
    """``trials.csv``, ``trials.md`` (best first) and ``search.png`` of the study."""
    import pandas as pd

    rows = trials_table(study)
    frame = pd.DataFrame(rows)
    for col in frame.columns:
        if frame[col].map(lambda v: isinstance(v, list | dict)).any():
            frame[col] = frame[col].map(json.dumps)
    csv_path, md_path = tune_dir / "trials.csv", tune_dir / "trials.md"
    atomic_write_bytes(csv_path, frame.to_csv(index=False).encode())
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for rec in frame.itertuples(index=False):
        cells = ["" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in rec]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(md_path, f"# Study {study.study_name}\n\n" + "\n".join(lines) + "\n")
    return [csv_path, md_path, _search_figure(study, tune_dir / "search.png")]


def _search_figure(study: Any, path: Path) -> Path:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    with matplotlib.rc_context({"font.size": 8, "axes.grid": True, "grid.alpha": 0.3}):
        fig = Figure(figsize=(6.5, 5.0), dpi=160, layout="constrained")
        curves, values = fig.subplots(2, 1)
        for t in trials:
            steps = sorted(t.intermediate_values)
            pruned = t.state == TrialState.PRUNED
            if steps:
                ys = [t.intermediate_values[s] for s in steps]
                curves.plot(steps, ys, ls="--" if pruned else "-", lw=0.9, alpha=0.8)
                if pruned:
                    curves.plot(steps[-1], ys[-1], "kx", ms=5)
        curves.set_xlabel("epoch")
        curves.set_ylabel(f"{MONITOR} (dashed, x: pruned)")
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if done:
            xs = [t.number for t in done]
            values.plot(xs, [t.value for t in done], "o", label="trial's best val_loss")
            best, running = [], float("inf")
            for t in done:
                running = min(running, t.value)
                best.append(running)
            values.step(xs, best, where="post", label="best so far")
            values.legend(loc="best")
        values.set_xlabel("trial")
        values.set_ylabel(MONITOR)
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


USAGE = """usage: python -m damage_lightning tune --config CONFIG [--config TUNE.yaml] [fit options]
                                     [--tune.KEY VALUE ...]

Run an Optuna study: each trial is a fit (no test split) with values drawn from the search
space of a config's tune: section; trials are pruned on val_loss; the best validation loss
selects the winner, which is retrained as a complete run folder. Keys of tune: (or --tune.KEY):
"""


def main_tune(argv: list[str]) -> int:
    """``python -m damage_lightning tune``: run (or resume, or join) the study, then retrain."""
    if {"-h", "--help"} & set(argv):
        print(USAGE + (TuneSettings.__doc__ or "").split("Args:", 1)[1])
        return 0
    import optuna

    from damage_lightning.tasks.base import TrainingDivergedError

    settings, fit_args, root = parse_args(argv)
    tune_dir = (root or Path(DEFAULT_ROOT)) / settings.study_name
    tune_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(settings, tune_dir)
    study = open_study(settings, url)
    missing = settings.n_trials - len(_finished(study))
    if missing > 0:
        print(f"study {settings.study_name}: {missing} of {settings.n_trials} trials to run")
        study.optimize(
            lambda trial: run_trial(trial, settings, fit_args, tune_dir / TRIALS_DIR),
            n_trials=missing,
            timeout=settings.timeout,
            # Other workers' trials count too: stop once the study holds n_trials.
            callbacks=[
                optuna.study.MaxTrialsCallback(
                    settings.n_trials,
                    states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED),
                )
            ],
            catch=(TrainingDivergedError,),
            gc_after_trial=True,
        )
    files = write_results(study, tune_dir)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    # Selection reads the trials' validation loss only; no trial ever ran the test split.
    best = min(complete, key=lambda t: t.value) if complete else None
    best_dir = retrain_best(best, fit_args, tune_dir) if best and settings.retrain else None
    result = TuneResult(
        study_name=settings.study_name,
        storage=url,
        n_complete=states.count("COMPLETE"),
        n_pruned=states.count("PRUNED"),
        n_failed=states.count("FAIL"),
        best_trial=best.number if best else None,
        best_val_loss=best.value if best else None,
        best_overrides=dict(best.user_attrs.get("overrides") or {}) if best else {},
        best_run_dir=str(best_dir) if best_dir else None,
    )
    atomic_write_json(tune_dir / "tune_result.json", result.to_json())
    print()
    print(
        f"trials: {result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed"
    )
    if best is None:
        print("no trial completed; nothing to retrain", file=sys.stderr)
    else:
        print(f"best trial: {best.number}  val_loss: {best.value:.4f}  {result.best_overrides}")
    for path in files:
        print(f"wrote: {path}")
    if best_dir:
        print(f"best run folder: {best_dir}")
    sys.stdout.flush()
    return 0
