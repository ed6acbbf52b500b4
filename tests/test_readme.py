"""README.md stays true: its notebook example runs as printed, and its two commands are there."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_two_commands_lead_the_readme():
    commands = re.findall(r"<!-- (main|test) command -->\n`([^`]+)`", README)
    assert [kind for kind, _ in commands] == ["main", "test"]
    main_cmd, test_cmd = (cmd for _, cmd in commands)
    assert main_cmd.startswith('python -m pip install -e ".[dev]"')
    assert "python -m damage_lightning fit --config configs/cnn.yaml" in main_cmd
    assert "pytest" in test_cmd
    assert (REPO / "configs" / "cnn.yaml").is_file()


@pytest.mark.slow
def test_notebook_example_runs(tmp_path, monkeypatch):
    block = README.split("## In a notebook", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("DAMAGE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    spec = namespace["spec"]
    dm = namespace["dm"]
    assert tuple(spec.shape[1:]) == dm.input_shape
    assert spec.shape[0] == dm.batch_size
    png = tmp_path / "spectrogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The built-in dataset was generated into the cache folder, as the README says.
    assert any((tmp_path / "cache").rglob("manifest.csv"))
