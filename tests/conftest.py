"""Shared fixtures: a tiny simulated dataset and the CLI arguments that train on it in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CWRU = REPO.parent / "shared" / "data" / "cwru_0hp_10class"

# Tests never talk to the real Claude API, whatever the developer's shell holds.
os.environ.pop("ANTHROPIC_API_KEY", None)
os.environ.pop("ANTHROPIC_BASE_URL", None)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five classes x 4 recordings x 2048 samples of the simulated frame (seeded)."""
    from damage_lightning.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("tiny") / "frame"
    generate_dataset(out, seed=1, recordings_per_class=4, n_samples=2048)
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny_overrides(data_dir: Path, root: Path, cache: Path, epochs: int = 2) -> list[str]:
    """CLI options that shrink the default configs to a few seconds of training."""
    return [
        "--data.data_dir",
        str(data_dir),
        "--data.cache_dir",
        str(cache),
        "--data.window",
        "256",
        "--data.hop",
        "128",
        "--data.n_fft",
        "64",
        "--data.hop_length",
        "16",
        "--data.f_max",
        "null",
        "--data.batch_size",
        "16",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.default_root_dir",
        str(root),
        "--report.llm",
        "false",
    ]


def tiny_model(config: str) -> list[str]:
    """Small widths for the architecture of ``config``."""
    if "resnet" in config:
        return [
            "--model.init_args.stem_width",
            "8",
            "--model.init_args.widths",
            "[8, 16]",
            "--model.init_args.blocks_per_stage",
            "[1, 1]",
        ]
    return ["--model.init_args.widths", "[8, 16]"]


@pytest.fixture
def tiny_args(tiny_data: Path, tmp_path: Path, cache_dir: Path) -> list[str]:
    return tiny_overrides(tiny_data, tmp_path / "models", cache_dir)


@pytest.fixture(scope="session")
def tracked_runs(tiny_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two finished tiny runs in ``<work>/models``: ``cnn`` (also logged to MLflow through the
    shipped ``configs/mlflow.yaml``, whose SQLite store lands in ``<work>/models/mlflow.db``)
    and ``resnet`` (default loggers only). Shared by the tracking and compare tests.
    """
    from damage_lightning.cli import main

    work = tmp_path_factory.mktemp("tracked")
    root = work / "models"
    configs = REPO / "configs"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the overlay's store and artefact paths are relative to the working folder
        for name, extra in (("cnn", ["--config", str(configs / "mlflow.yaml")]), ("resnet", [])):
            config = str(configs / f"{name}.yaml")
            args = [*tiny_overrides(tiny_data, root, cache_dir), *tiny_model(config)]
            main(["fit", "--config", config, *extra, *args, "--run_name", name])
    return {"root": root, "cnn": root / "cnn", "resnet": root / "resnet"}
