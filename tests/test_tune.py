"""`tune`: an Optuna study of tiny fits that prunes, survives SIGKILL, and is shared by workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, tiny_model, tiny_overrides

from damage_lightning.cli import main
from damage_lightning.errors import DataValidationError
from damage_lightning.search_space import parse_args

optuna = pytest.importorskip("optuna")
CNN = str(REPO / "configs" / "cnn.yaml")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
LR, DROPOUT = "model.init_args.lr", "model.init_args.dropout"


def _space(tmp_path, **tune):
    """A search config: a learning rate that learns, one far too high (5.0), two dropouts."""
    section = {
        "space": {LR: {"choices": [0.003, 5.0]}, DROPOUT: {"choices": [0.1, 0.2]}},
        **tune,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"tune": section}))
    return str(path)


def _tune_args(tiny_data, cache_dir, root, space, *extra, epochs=2):
    return [
        "tune",
        "--config",
        CNN,
        "--config",
        space,
        *tiny_overrides(tiny_data, root, cache_dir, epochs=epochs),
        *tiny_model(CNN),
        *extra,
    ]


def _url(root, name):
    return f"sqlite:///{root / name / 'study.db'}"


def _new_study(root, name, enqueue=()):
    (root / name).mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=_url(root, name), direction="minimize")
    for params in enqueue:
        study.enqueue_trial(params)
    return study


def _spawn(args, log):
    # cwd and PYTHONPATH: the subprocess imports this checkout, whatever is installed.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "damage_lightning", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for(study, n_finished, n_running, proc, log_path, limit_s=600):
    """Poll the study until it holds so many finished and running trials (the event), the worker
    dies or the safety limit passes."""
    running = (optuna.trial.TrialState.RUNNING,)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if (
            len(study.get_trials(deepcopy=False, states=FINISHED)) >= n_finished
            and len(study.get_trials(deepcopy=False, states=running)) >= n_running
        ):
            return
        if proc.poll() is not None:
            pytest.fail(f"tune exited early:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"not {n_finished} finished and {n_running} running trials in {limit_s} s")


def test_killed_tune_resumes_keeps_its_trials_and_retrains_the_best(
    tiny_data, cache_dir, tmp_path, capsys
):
    root, name = tmp_path / "models", "kill"
    # Fixed first trials: one that learns, one whose huge step sends its val_loss far above the
    # first's (pruned at its first epoch), then another that learns.
    study = _new_study(
        root,
        name,
        [{LR: 0.003, DROPOUT: 0.1}, {LR: 5.0, DROPOUT: 0.1}, {LR: 0.003, DROPOUT: 0.2}],
    )
    space = _space(tmp_path, study_name=name, n_trials=3, startup_trials=1, warmup_epochs=0, seed=0)
    args = _tune_args(tiny_data, cache_dir, root, space)
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = _spawn(args, log)
        try:
            # Killed inside its third trial, after one complete and one pruned.
            _wait_for(study, 2, 1, proc, log_path)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {t.number: t for t in study.get_trials(states=FINISHED)}
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "PRUNED"
    (killed,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))

    assert main(args) == 0
    out = capsys.readouterr().out
    after = {t.number: t for t in study.get_trials()}
    for number, trial in before.items():
        kept = after[number]
        assert (kept.state, kept.params, kept.value) == (trial.state, trial.params, trial.value)
        assert kept.intermediate_values == trial.intermediate_values
    assert len([t for t in after.values() if t.state in FINISHED]) >= 3
    # The killed worker's trial stays running until its heartbeat is stale (then it is retried).
    assert after[killed.number].state.name == "RUNNING"

    tune_dir = root / name
    result = json.loads((tune_dir / "tune_result.json").read_text())
    complete = [t for t in after.values() if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value)
    # Selected on validation loss alone.
    assert (result["best_trial"], result["best_val_loss"]) == (best.number, best.value)
    assert result["n_pruned"] >= 1
    run = tune_dir / f"best-trial-{best.number:04d}"
    assert result["best_run_dir"] == str(run)
    for rel in (
        "model_info.json",
        "checkpoints/best.ckpt",
        "export/model.onnx",
        "report/training_report.pdf",
        "tensorboard",
    ):
        assert (run / rel).exists(), rel
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["lr"] == best.params[LR]
    assert f"best run folder: {run}" in out
    # Trials never ran the test split: no trial folder has a card or test metrics.
    for trial_dir in (tune_dir / "trials").iterdir():
        assert not (trial_dir / "model_info.json").exists()
        assert "test_loss" not in (trial_dir / "metrics.csv").read_text()
    table = (tune_dir / "trials.csv").read_text()
    assert "pruned" in table and len(table.strip().splitlines()) == 1 + len(after)
    assert (tune_dir / "search.png").read_bytes()[:4] == b"\x89PNG"


def test_two_workers_share_one_study_and_run_distinct_trials(tiny_data, cache_dir, tmp_path):
    root, name = tmp_path / "models", "shared"
    study = _new_study(root, name)
    space = _space(tmp_path, study_name=name, n_trials=3, pruner="none", retrain=False)
    storage = ("--tune.storage", _url(root, name))
    args = _tune_args(tiny_data, cache_dir, root, space, *storage, epochs=1)
    procs = []
    for i in range(2):
        log = open(tmp_path / f"worker{i}.log", "w")
        procs.append((_spawn(args, log), log))
    for proc, log in procs:
        proc.wait(timeout=600)
        log.close()
    for i, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    trials = study.get_trials(states=FINISHED)
    assert len(trials) >= 3
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2, workers  # both took part
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(run_dirs)  # each trial ran once, in its own folder
    for run_dir in run_dirs:
        assert (root / name / "trials" / os.path.basename(run_dir) / "checkpoints").is_dir()
    assert not list((root / name).glob("best-trial-*"))  # retrain: false


def test_search_space_errors_name_the_file_and_entry(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tune": {"space": {LR: {"low": 0.1}}}}))
    with pytest.raises(DataValidationError) as exc:
        parse_args(["--config", str(bad)])
    assert str(bad) in str(exc.value) and f"tune.space.{LR}" in str(exc.value)
    with pytest.raises(DataValidationError, match=r"tune\.n_trial"):
        parse_args(["--config", _space(tmp_path), "--tune.n_trial", "3"])


def test_tune_section_and_options_are_taken_out_of_the_fit_arguments(tmp_path):
    space = _space(tmp_path, n_trials=5, study_name="s")
    settings, fit_args, root = parse_args(
        ["--config", CNN, "--config", space, "--tune.n_trials=7", "--trainer.default_root_dir", "x"]
    )
    assert (settings.n_trials, settings.study_name, str(root)) == (7, "s", "x")
    assert fit_args == ["--config", CNN, "--trainer.default_root_dir", "x"]
    assert settings.space[LR].choices == (0.003, 5.0)
