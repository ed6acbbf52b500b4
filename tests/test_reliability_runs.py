"""Runs that go wrong: killed and interrupted fits, unusable output folders, an unreachable LLM,
hostile text in names, untrusted checkpoint files and a diverging loss.

The subprocess tests start ``python -m damage_lightning fit`` on the tiny simulated dataset and
interfere with it (SIGKILL, SIGINT) at seeded points, where a probe callback (``probes.PauseAt``)
holds the run until the signal arrives; the others call ``main([...])`` in-process.
docs/reliability.md lists what each test guarantees.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_model, tiny_overrides
from helpers import checkpoint_state

from damage_lightning import artifacts
from damage_lightning.cli import main

CNN = str(REPO / "configs" / "cnn.yaml")
# Several epochs, and patience so high that early stopping never ends the run early.
LONG_RUN_CONFIG = """\
trainer:
  max_epochs: {epochs}
  enable_progress_bar: false
  callbacks:
    - class_path: damage_lightning.callbacks.RunCheckpoint
      init_args:
        monitor: val_loss
        mode: min
        filename: best
        save_last: true
        save_top_k: 1
        enable_version_counter: false
    - class_path: lightning.pytorch.callbacks.EarlyStopping
      init_args:
        monitor: val_loss
        mode: min
        patience: 1000
model:
  init_args:
    lr_patience: 1
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    env.pop("DAMAGE_LIGHTNING_RUN_NAME", None)
    return env


def _long_run_args(
    tiny_data: Path, cache: Path, root: Path, config: Path, epochs: int
) -> list[str]:
    config.write_text(LONG_RUN_CONFIG.format(epochs=epochs))
    return [
        "fit", "--config", CNN, "--config", str(config),
        *tiny_overrides(tiny_data, root, cache, epochs=epochs), *tiny_model(CNN),
        "--report.enabled", "false", "--run_name", "r",
    ]  # fmt: skip


def _pause_args(marker: Path, epoch: int, hook: str) -> list[str]:
    """Options that hold the run at ``hook`` of ``epoch`` (writing ``marker``) until signalled."""
    return [
        "--trainer.callbacks+=probes.PauseAt", f"--trainer.callbacks.marker={marker}",
        f"--trainer.callbacks.epoch={epoch}", f"--trainer.callbacks.hook={hook}",
    ]  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Wait until ``path`` exists (an event), failing early if the run ends first."""
    end = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, "the run ended before writing " + str(path)
        assert time.monotonic() < end, f"no {path} after {timeout} s"
        time.sleep(0.05)


def _assert_clean_run_folder(run: Path) -> None:
    """Every JSON file parses and no temporary file of an atomic write is left behind."""
    leftovers = [p for p in run.rglob("*") if p.name.startswith(artifacts.TMP_PREFIX)]
    assert leftovers == []
    for path in run.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))


KILL_POINTS = ("train_batch", "validation_batch", "save_checkpoint", "train_epoch_end")


def _kill_and_resume(seed: int, tiny_data: Path, cache: Path, tmp: Path) -> dict:
    """Kill a fit at a seeded point after its first checkpoint, then resume it to the end."""
    rng = random.Random(seed)
    epochs = 6
    # A seeded point after the first checkpoint (epoch 0's): in training, in validation, while
    # a checkpoint is assembled, or between validation and the epoch's checkpoints.
    k, hook = rng.randrange(1, epochs - 1), rng.choice(KILL_POINTS)
    root = tmp / f"kill{seed}"
    root.mkdir()
    args = _long_run_args(tiny_data, cache, root / "models", root / "long.yaml", epochs)
    cmd = [sys.executable, "-m", "damage_lightning", *args]
    last = root / "models" / "r" / "checkpoints" / "last.ckpt"
    marker = root / "paused.json"
    proc = subprocess.Popen(
        [*cmd, *_pause_args(marker, k, hook)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(marker, proc)
        paused = json.loads(marker.read_text())
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = checkpoint_state(last)
    probe = root / "probe.json"
    res = subprocess.run(
        [*cmd, "--ckpt_path", "last", "--run_name", "r",
         "--trainer.callbacks+=helpers.ResumeProbe", f"--trainer.callbacks.path={probe}"],
        env=_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    return {
        "alive": alive,
        "paused": paused,
        "point": (k, hook),
        "returncode": proc.returncode,
        "resume": res,
        "saved": saved,
        "probe": json.loads(probe.read_text()) if probe.is_file() else None,
        "run": root / "models" / "r",
        "epochs": epochs,
    }


@pytest.mark.slow
def test_sigkill_at_seeded_points_then_resume(tiny_data, cache_dir, tmp_path):
    # Two kill points at once: the runs are independent and mostly wait on each other's CPU.
    # Seed 1 kills in epoch 2's training, seed 7 in epoch 3's validation.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(
            pool.map(lambda s: _kill_and_resume(s, tiny_data, cache_dir, tmp_path), (1, 7))
        )
    for r in results:
        assert r["alive"]
        k, hook = r["point"]
        assert (r["paused"]["epoch"], r["paused"]["hook"]) == (k, hook)
        # Held before epoch k's checkpoints were written: last.ckpt ends epoch k - 1.
        assert r["saved"]["current_epoch"] == k
        assert r["returncode"] == -signal.SIGKILL
        res = r["resume"]
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Traceback" not in res.stderr
        # The resumed run starts exactly from the saved epoch, early-stopping and LR schedule state.
        assert r["probe"] == pytest.approx(r["saved"])
        run = r["run"]
        history = json.loads((run / "training_history.json").read_text())
        assert [e["epoch"] for e in history["epochs"]] == list(range(r["epochs"]))
        assert history["early_stopping"]["patience"] == 1000
        info = json.loads((run / "model_info.json").read_text())
        assert info["trainer"]["epochs_run"] == r["epochs"]
        # last.ckpt holds the final step of the run, not the best epoch's.
        steps_per_epoch = r["saved"]["global_step"] / r["saved"]["current_epoch"]
        final = checkpoint_state(run / "checkpoints" / "last.ckpt")["global_step"]
        assert final == pytest.approx(steps_per_epoch * r["epochs"])
        _assert_clean_run_folder(run)


@pytest.mark.slow
def test_sigint_saves_last_checkpoint_and_says_how_to_resume(tiny_data, cache_dir, tmp_path):
    epochs = 6
    root = tmp_path / "models"
    args = _long_run_args(tiny_data, cache_dir, root, tmp_path / "long.yaml", epochs)
    last = root / "r" / "checkpoints" / "last.ckpt"
    marker = tmp_path / "paused.json"
    # Held in the middle of epoch 2's training (epochs 0 and 1 have their checkpoints).
    # Ctrl-C's default action, even when this test runs under a launcher that ignores SIGINT
    # (a shell's background job, nohup): an ignored SIGINT is inherited and would never arrive.
    proc = subprocess.Popen(
        [sys.executable, "-m", "damage_lightning", *args, *_pause_args(marker, 2, "train_batch")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        _wait_for(marker, proc)
        before = checkpoint_state(last)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Lightning ends an interrupted fit with exit status 1 after its graceful shutdown.
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert before["current_epoch"] == 2
    saved = checkpoint_state(last)
    assert saved["global_step"] >= before["global_step"]
    match = re.search(r"resume with: (python -m damage_lightning fit .*)", err)
    assert match, err[-3000:]
    assert f"--ckpt_path {last}" in match.group(1)
    assert not (root / "r" / "model_info.json").exists()
    _assert_clean_run_folder(root / "r")

    # The printed command resumes (only one more epoch, to keep the test short).
    resume = [*match.group(1).split()[1:], "--trainer.max_epochs", str(saved["current_epoch"] + 1)]
    res = subprocess.run(
        [sys.executable, *resume], env=_env(), capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"run folder: {root / 'r'}"
    history = json.loads((root / "r" / "training_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == list(range(saved["current_epoch"] + 1))
    _assert_clean_run_folder(root / "r")


# ---------------------------------------------------------------------------- disk and paths
def _main_exit(args: list[str]) -> tuple[int, str, str]:
    """Run ``main(args)`` and return ``(exit status, stdout, stderr)``."""
    out, err = StringIO(), StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_output_folder_under_a_file_is_reported_before_training(tiny_data, cache_dir, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder\n")
    root = blocker / "models"
    code, _, err = _main_exit(
        ["fit", "--config", CNN, *tiny_overrides(tiny_data, root, cache_dir), *tiny_model(CNN)]
    )
    assert code == 2
    assert "cannot write the run folder here" in err
    assert str(root) in err
    assert blocker.read_text() == "not a folder\n"


def test_full_disk_is_reported_before_training(tiny_data, cache_dir, tmp_path, monkeypatch):
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifacts.os, "fsync", no_space)
    root = tmp_path / "models"
    code, _, err = _main_exit(
        ["fit", "--config", CNN, *tiny_overrides(tiny_data, root, cache_dir), *tiny_model(CNN)]
    )
    assert code == 2
    assert "No space left on device" in err
    assert not list(root.rglob("*.ckpt"))
    # The probe file does not stay behind.
    assert not [p for p in root.rglob("*") if p.is_file()]


def test_new_run_never_overwrites_and_resume_stays_in_its_folder(
    tiny_data, cache_dir, tmp_path, monkeypatch
):
    import damage_lightning.cli as cli

    class FrozenClock(cli.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(cli, "datetime", FrozenClock)
    root = tmp_path / "models"
    taken = root / "cnn-20260102-030405"
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("someone else's run\n")
    base = ["fit", "--config", CNN, *tiny_overrides(tiny_data, root, cache_dir), *tiny_model(CNN),
            "--report.enabled", "false"]  # fmt: skip
    code, out, _ = _main_exit(base)
    assert code == 0
    run = root / "cnn-20260102-030405-2"
    assert out.strip().splitlines()[-1] == f"run folder: {run}"
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]

    # An explicit name that exists is refused, not reused.
    code, _, err = _main_exit([*base, "--run_name", run.name])
    assert code == 2 and "a run folder of this name exists" in err

    # Resuming from a checkpoint file continues in that checkpoint's run folder, whatever
    # default_root_dir says.
    elsewhere = tmp_path / "other"
    resume = ["fit", "--config", CNN, *tiny_overrides(tiny_data, elsewhere, cache_dir, epochs=3),
              *tiny_model(CNN), "--report.enabled", "false",
              "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]  # fmt: skip
    code, out, err = _main_exit(resume)
    assert code == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == f"run folder: {run}"
    history = json.loads((run / "training_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
    assert not elsewhere.exists() or not any(elsewhere.iterdir())
    assert sorted(p.name for p in root.iterdir()) == [taken.name, run.name]


def test_stale_temp_files_of_a_killed_run_are_removed_on_resume(tiny_data, cache_dir, tmp_path):
    root = tmp_path / "models"
    base = ["fit", "--config", CNN, *tiny_overrides(tiny_data, root, cache_dir), *tiny_model(CNN),
            "--report.enabled", "false", "--run_name", "r"]  # fmt: skip
    assert _main_exit(base)[0] == 0
    # What SIGKILL in the middle of an atomic write leaves: a half-written temporary file.
    stale = root / "r" / f"{artifacts.TMP_PREFIX}training_history.json.abc123"
    stale.write_text('{"epochs": [')
    code, _, err = _main_exit([*base, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert code == 0, err[-3000:]
    _assert_clean_run_folder(root / "r")


# ---------------------------------------------------------------------------------- LLM path
def test_unreachable_llm_falls_back_within_the_timeout(tiny_data, cache_dir, tmp_path, monkeypatch):
    from damage_lightning.report import analysis

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    # Loopback port 9 (discard): nothing listens, so every connection attempt fails at once.
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    timings: list[float] = []
    real = analysis._claude_sections

    def timed(*args, **kwargs):
        # The Claude call itself (the SDK import and the offline analysis are not waiting).
        start = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            timings.append(time.monotonic() - start)

    monkeypatch.setattr(analysis, "_claude_sections", timed)
    root = tmp_path / "models"
    args = ["fit", "--config", CNN, *tiny_overrides(tiny_data, root, cache_dir), *tiny_model(CNN),
            "--report.llm", "true", "--report.timeout", "3", "--report.max_retries", "5",
            "--run_name", "llm"]  # fmt: skip
    code, _out, err = _main_exit(args)
    assert code == 0, err[-3000:]
    assert len(timings) == 1 and timings[0] < 3.0 + 1.0
    info = json.loads((root / "llm" / "model_info.json").read_text())
    reason = info["report"]["fallback_reason"]
    assert reason and ("connect" in reason.lower() or "timed out" in reason.lower()), reason
    assert info["report"]["analysis_source"] == "offline analysis"
    md = (root / "llm" / "report" / "analysis.md").read_text()
    assert reason in md
    assert (root / "llm" / "report" / "training_report.pdf").stat().st_size > 10_000
    for path in (root / "llm").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt", ".md", ".yaml", ".csv"):
            assert "sk-ant-test-not-a-real-key" not in path.read_text(errors="replace"), path


# ------------------------------------------------------------------------------- hostile text
HOSTILE_LABELS = (
    "<b>&amp;</b>",
    "bell\x07tab\tend",
    "x" * 200,
    "נזק_סדק",
)


HOSTILE_FILES = ("<b>rec&amp;'q'\"", "bell\x07file", "y" * 200, "הקלטה")


def _hostile_dataset(root: Path) -> None:
    """Labels (manifest) and file names (no '/', which no file name may hold) full of markup."""
    import csv

    rng = np.random.default_rng(5)
    n, rate = 2048, 1000.0
    t = np.arange(n) / rate
    header = "time,acc<i>x</i>,תאוצה_y"
    rows = [("path", "label")]
    for i, label in enumerate(HOSTILE_LABELS):
        folder = root / f"class{i}"
        folder.mkdir(parents=True)
        for r in range(3):
            f = 40.0 + 35.0 * i
            x = np.sin(2 * np.pi * f * t) + 0.3 * rng.standard_normal(n)
            y = np.cos(2 * np.pi * 1.7 * f * t) + 0.3 * rng.standard_normal(n)
            body = "\n".join(f"{t[k]:.4f},{x[k]:.5f},{y[k]:.5f}" for k in range(n))
            name = f"{HOSTILE_FILES[i]}{r}.csv"
            (folder / name).write_text(f"{header}\n{body}\n", encoding="utf-8")
            rows.append((f"class{i}/{name}", label))
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def test_hostile_names_survive_report_onnx_and_json(cache_dir, tmp_path):
    from damage_lightning.deploy.session import read_onnx_metadata

    data = tmp_path / "hostile"
    _hostile_dataset(data)
    root = tmp_path / "models"
    code, _out, err = _main_exit(
        [
            "fit",
            "--config",
            CNN,
            *tiny_overrides(data, root, cache_dir, epochs=1),
            *tiny_model(CNN),
            "--run_name",
            "h",
        ]
    )
    assert code == 0, err[-3000:]
    run = root / "h"
    _assert_clean_run_folder(run)
    info = json.loads((run / "model_info.json").read_text(encoding="utf-8"))
    assert info["classes"] == sorted(HOSTILE_LABELS)
    assert info["input"]["channels"] == ["acc<i>x</i>", "תאוצה_y"]
    meta = read_onnx_metadata(run / "export" / "model.onnx")
    assert meta.class_names == sorted(HOSTILE_LABELS)
    assert meta.channels == ["acc<i>x</i>", "תאוצה_y"]
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    paths = {r["path"] for r in splits["recordings"]}
    assert {f"class{i}/{name}0.csv" for i, name in enumerate(HOSTILE_FILES)} <= paths
    from pypdf import PdfReader

    text = "".join(
        page.extract_text() or ""
        for page in PdfReader(run / "report" / "training_report.pdf").pages
    )
    # The markup reached the PDF as text, not as formatting.
    assert "<b>&amp;</b>" in text or "&amp;" in text


# ---------------------------------------------------------------------------- untrusted files
class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_is_not_executed(tiny_data, cache_dir, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _Payload(marker)}, ckpt)
    # The payload does run under a plain unpickler: the file is a real threat.
    with open(ckpt, "rb"):
        assert pickle.dumps(_Payload(marker))
    common = [*tiny_overrides(tiny_data, tmp_path / "models", cache_dir), *tiny_model(CNN)]
    for sub in ("fit", "export", "test"):
        code, _, err = _main_exit([sub, "--config", CNN, *common, "--ckpt_path", str(ckpt)])
        assert code == 2, (sub, err[-3000:])
        assert str(ckpt) in err and "Traceback" not in err
        assert not marker.exists(), sub


def test_checkpoint_and_onnx_loading_in_the_code_is_safe():
    sources = list((REPO / "damage_lightning").rglob("*.py")) + list(
        (REPO / "scripts").glob("*.py")
    )
    loads = 0
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "weights_only=False" not in text, path
        assert "pickle.load" not in text and "register_custom_ops_library" not in text, path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            loads += 1
            assert "weights_only=True" in call.group(1), (path, call.group(0))
    assert loads >= 1
    # The gateway's code runs models with onnxruntime and never imports torch or an unpickler.
    gateway = [
        REPO / "scripts" / "onnx_predict.py",
        *(REPO / "damage_lightning" / "deploy").glob("*.py"),
    ]
    assert "import onnxruntime" in (REPO / "damage_lightning" / "deploy" / "session.py").read_text()
    for path in gateway:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(torch|pickle|dill|joblib)\b", text, re.M), path


# -------------------------------------------------------------------------- numerical sanity
@pytest.mark.slow
def test_diverging_loss_stops_with_a_clear_message(tiny_data, cache_dir, tmp_path):
    root = tmp_path / "models"
    res = subprocess.run(
        [sys.executable, "-m", "damage_lightning", "fit", "--config", CNN,
         *tiny_overrides(tiny_data, root, cache_dir, epochs=30), *tiny_model(CNN),
         "--model.init_args.lr", "1e12"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "training loss became NaN/inf" in res.stderr
    assert "lower the learning rate" in res.stderr
    # It stopped at the first bad step, within the first epoch (no epoch ended with a
    # checkpoint), not after 30 epochs of NaN.
    assert not list(root.rglob("*.ckpt"))
    assert not list(root.rglob("model_info.json"))
