"""The shipped configs travel with the package: ``--config cnn.yaml`` works from anywhere,
including a wheel install run outside the repository, and says which file it used."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from damage_lightning.cli import main
from damage_lightning.config_files import (
    SHIPPED_DIR,
    resolve_config,
    resolve_config_args,
    shipped_config,
    shipped_configs,
)
from damage_lightning.errors import DataValidationError


def _main(args: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_the_shipped_configs_are_package_data_and_the_repository_folder():
    assert SHIPPED_DIR == REPO / "damage_lightning" / "configs"
    assert {"bearing.yaml", "cnn.yaml", "resnet.yaml", "cwru.yaml"} <= set(shipped_configs())
    assert shipped_configs() == sorted(p.name for p in SHIPPED_DIR.glob("*.yaml"))
    # The README's `--config configs/cnn.yaml` (from the repository root) reads the same files.
    assert (REPO / "configs").resolve() == SHIPPED_DIR
    assert shipped_config("cnn.yaml") == SHIPPED_DIR / "cnn.yaml"
    with pytest.raises(DataValidationError, match=r"shipped configs: bearing\.yaml, cnn\.yaml"):
        shipped_config("../pyproject.toml")


def test_resolve_prefers_a_file_where_the_user_stands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("cnn.yaml") == SHIPPED_DIR / "cnn.yaml"
    assert resolve_config("configs/resnet.yaml") == SHIPPED_DIR / "resnet.yaml"
    mine = tmp_path / "cnn.yaml"
    mine.write_text("trainer:\n  max_epochs: 1\n")
    assert resolve_config("cnn.yaml") == Path("cnn.yaml")
    assert resolve_config(str(mine)) == mine


@pytest.mark.parametrize(
    "name", ["nope.yaml", "other/cnn.yaml", "../cnn.yaml", "/nowhere/configs/cnn.yaml"]
)
def test_resolve_refuses_what_is_neither_a_file_nor_shipped(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataValidationError) as info:
        resolve_config(name)
    message = str(info.value)
    assert message.startswith(f"{name}: no such config file")
    assert "shipped configs: " + ", ".join(shipped_configs()) in message
    assert "\n" not in message


def test_config_arguments_are_rewritten_and_announced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own.yaml").write_text("seed_everything: 1\n")
    shipped = str(SHIPPED_DIR / "cnn.yaml")
    err = StringIO()
    argv = ["fit", "--config", "cnn.yaml", "--config=configs/cwru.yaml", "-c", "own.yaml",
            "--config", "{trainer: {max_epochs: 1}}", "--print_config"]  # fmt: skip
    assert resolve_config_args(argv, err) == [
        "fit", "--config", shipped, f"--config={SHIPPED_DIR / 'cwru.yaml'}", "-c", "own.yaml",
        "--config", "{trainer: {max_epochs: 1}}", "--print_config",
    ]  # fmt: skip
    assert err.getvalue().splitlines() == [
        f"config: cnn.yaml -> {shipped} (shipped)",
        f"config: configs/cwru.yaml -> {SHIPPED_DIR / 'cwru.yaml'} (shipped)",
    ]


def test_cli_uses_the_shipped_config_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["fit", "--config", "cnn.yaml", "--print_config"])
    assert code == 0, err
    assert f"config: cnn.yaml -> {SHIPPED_DIR / 'cnn.yaml'} (shipped)" in err
    printed = yaml.safe_load(out)
    assert printed["model"]["class_path"] == "damage_lightning.models.CNNClassifier"
    assert printed["data"]["n_fft"] == 512


def test_cli_names_the_shipped_configs_for_an_unknown_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["fit", "--config", "cnnn.yaml"])
    assert code == 2
    assert err.strip().splitlines() == [
        "error: cnnn.yaml: no such config file here, and the package ships none of that name; "
        "shipped configs: " + ", ".join(shipped_configs())
    ]
    assert out == ""


def test_cwru_data_dir_stays_relative_to_where_the_user_stands(monkeypatch):
    # configs/cwru.yaml names ../shared/data/...: from the repository root that is the shared
    # data beside the checkout, whichever file (link or package data) the parser read.
    monkeypatch.chdir(REPO)
    code, out, err = _main(
        ["fit", "--config", "configs/cnn.yaml", "--config", "configs/cwru.yaml", "--print_config"]
    )
    assert code == 0, err
    assert "(shipped)" not in err  # the repository's configs/ exists: nothing was substituted
    data_dir = yaml.safe_load(out)["data"]["data_dir"]
    assert data_dir == "../shared/data/cwru_0hp_10class"
    assert (REPO / data_dir).resolve() == (REPO.parent / "shared/data/cwru_0hp_10class").resolve()


# ------------------------------------------------------------------------- from a wheel install
def _build_wheel(tmp_path: Path) -> Path:
    """Build the package's wheel offline, from a copy of what ``pip install .`` reads."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "damage_lightning",
        src / "damage_lightning",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # The repository's configs link, as committed: the build must not trip over it.
    os.symlink("damage_lightning/configs", src / "configs")
    dist = tmp_path / "dist"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, (
        "building the wheel offline needs setuptools>=70.1 (the dev extras): " + res.stderr[-3000:]
    )
    (wheel,) = dist.glob("damage_lightning-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_install_finds_its_shipped_config_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    target = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    packaged = target / "damage_lightning" / "configs"
    assert {"cnn.yaml", "resnet.yaml", "cwru.yaml"} <= {p.name for p in packaged.glob("*.yaml")}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # damage_lightning from the wheel; torch, Lightning and the rest from this interpreter.
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *site])}
    env.pop("DAMAGE_LIGHTNING_RUN_NAME", None)
    res = subprocess.run(
        [sys.executable, "-c", "import damage_lightning; print(damage_lightning.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert Path(res.stdout.strip()).parent == target / "damage_lightning", res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "damage_lightning", "fit", "--config", "cnn.yaml", "--print_config"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"config: cnn.yaml -> {packaged / 'cnn.yaml'} (shipped)" in res.stderr
    printed = yaml.safe_load(res.stdout)
    assert printed["model"]["class_path"] == "damage_lightning.models.CNNClassifier"
    assert printed["data"]["spectrogram"] == "stft" and printed["data"]["f_max"] == 300.0
    assert list(elsewhere.iterdir()) == []
