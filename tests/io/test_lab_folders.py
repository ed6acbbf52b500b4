"""Folders of lab files train as they come: .mat files whose variable names differ between files,
and other formats, through the same CLI as CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, tiny_model, tiny_overrides

from damage_lightning.cli import main

CNN = str(REPO / "configs" / "cnn.yaml")


def _signal(kind: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 1024.0
    tone = np.sin(2 * np.pi * (60.0 + 90.0 * kind) * t)
    return (tone + 0.3 * rng.standard_normal(n)).astype(np.float64)


def _cwru_like(root, n_per_class: int = 4, n: int = 2048) -> None:
    """CWRU's layout: per file X<no>_DE_time, X<no>_FE_time and a scalar X<no>RPM."""
    from scipy.io import savemat

    number = 97
    for kind, label in enumerate(("normal", "inner_race")):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            number += 1
            x = _signal(kind, n, number)
            savemat(
                root / label / f"{label}_{i}.mat",
                {
                    f"X{number:03d}_DE_time": x[:, None],
                    f"X{number:03d}_FE_time": (0.5 * x)[:, None],
                    f"X{number:03d}RPM": 1797,
                },
            )


@pytest.mark.slow
def test_mat_files_with_differing_variable_names_train_with_one_option(tmp_path, cache_dir, capsys):
    data = tmp_path / "lab"
    _cwru_like(data)
    root = tmp_path / "models"
    args = [
        "fit",
        "--config",
        CNN,
        *tiny_overrides(data, root, cache_dir, epochs=1),
        *tiny_model(CNN),
        "--data.sample_rate",
        "1024",
    ]
    # Without the option: one clear error naming the file and the setting to use.
    with pytest.raises(SystemExit) as exc:
        main([*args, "--run_name", "mat"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "inner_race/inner_race_0.mat" in err and "--data.variables" in err
    # Nothing was trained, so nothing blocks running again under the same name.
    assert not (root / "mat").exists()
    main([*args, "--data.variables", '["*_DE_time"]', "--run_name", "mat"])
    info = json.loads((root / "mat" / "model_info.json").read_text())
    assert info["input"]["channels"] == ["DE_time"]
    assert info["classes"] == ["inner_race", "normal"]
    assert (root / "mat" / "export" / "model.onnx").is_file()
