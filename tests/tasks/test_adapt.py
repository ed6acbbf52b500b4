"""Test-time BatchNorm adaptation: only BatchNorm statistics change, toward the target data's;
``test``/``predict --adapt`` use them in memory, ``export --adapt`` writes them."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, tiny_model, tiny_overrides
from torch import nn

from damage_lightning.cli import main
from damage_lightning.deploy.session import read_onnx_metadata
from damage_lightning.tasks.adapt import adapt_batchnorm

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.BatchNorm1d(3),
        nn.Linear(3, 8),
        nn.Dropout(0.5),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 2),
    )


def _target(n_batches: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    scale, offset = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([4.0, -3.0, 1.0])
    return [torch.randn(32, 3, generator=g) * scale + offset for _ in range(n_batches)]


def test_only_batchnorm_statistics_change_and_match_the_target():
    net = _net()
    net.eval()
    net[0].momentum = 0.3
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = _target()
    done = adapt_batchnorm(net, batches)
    after = net.state_dict()
    assert (done.layers, done.batches, done.windows) == (2, 5, 160)
    for key, value in before.items():
        if key.rsplit(".", 1)[-1] in BN_STATS:
            assert not torch.equal(after[key], value), key
        else:
            assert torch.equal(after[key], value), f"{key} must stay bit-identical"
    # A cumulative average over the batches (momentum=None): the first layer's mean is exactly
    # the mean of the batch means, its variance that of the unbiased batch variances.
    torch.testing.assert_close(
        net[0].running_mean, torch.stack([b.mean(0) for b in batches]).mean(0)
    )
    torch.testing.assert_close(
        net[0].running_var, torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    )
    assert int(net[0].num_batches_tracked) == 5
    # Modes and momenta are given back.
    assert not any(m.training for m in net.modules())
    assert net[0].momentum == 0.3 and net[3].momentum == 0.1


def test_dropout_is_off_while_adapting():
    # With dropout active the second BatchNorm would see zeroed, rescaled features.
    batches = _target()
    net, reference = _net(), _net()
    reference[2].p = 0.0
    adapt_batchnorm(net, batches)
    adapt_batchnorm(reference, batches)
    torch.testing.assert_close(net[3].running_var, reference[3].running_var)


def test_the_adapted_model_normalises_target_data():
    net = _net()
    target = _target()
    adapt_batchnorm(net, target)
    with torch.no_grad():
        first = net[0](torch.cat(target))
    assert first.mean(0).abs().max() < 0.1 and (first.std(0) - 1).abs().max() < 0.1


def test_no_windows_or_no_batchnorm_is_refused_and_changes_nothing():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="no windows"):
        adapt_batchnorm(net, [])
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert net.training  # the mode it had
    with pytest.raises(ValueError, match="no BatchNorm"):
        adapt_batchnorm(nn.Sequential(nn.Linear(3, 2)), _target())


# ------------------------------------------------------------------------------- the CLI
CNN = str(REPO / "configs" / "cnn.yaml")


@pytest.fixture(scope="module")
def run(tiny_data, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt") / "models"
    args = [*tiny_overrides(tiny_data, root, cache_dir, epochs=2), *tiny_model(CNN)]
    main(["fit", "--config", CNN, *args, "--report.enabled", "false", "--run_name", "adapt"])
    return root / "adapt"


@pytest.fixture(scope="module")
def target(tiny_data, tmp_path_factory):
    """The tiny recordings as another machine would give them: other gain, other sensor noise;
    unlabelled (files at the top of the folder)."""
    out = tmp_path_factory.mktemp("target")
    rng = np.random.default_rng(0)
    for i, path in enumerate(sorted(tiny_data.rglob("*.csv"))):
        if path.name == "manifest.csv":
            continue
        frame = pd.read_csv(path)
        frame = frame * 5.0 + rng.normal(0.0, frame.std().mean(), frame.shape)
        frame.to_csv(out / f"target_{i:02d}.csv", index=False)
    return out


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_predict_and_test_adapt_in_memory(run, target, tmp_path, capsys):
    best = run / "checkpoints" / "best.ckpt"
    digest = _digest(best)
    common = ["--config", str(run / "config.yaml"), "--ckpt_path", str(best)]
    predict = [*common, "--data.predict_data_dir", str(target)]
    main(["predict", *predict, "--output", str(tmp_path / "plain")])
    main(["predict", *predict, "--adapt", str(target), "--output", str(tmp_path / "adapted")])
    printed = capsys.readouterr().out
    assert "adapt: BatchNorm statistics of 2 layers re-estimated on" in printed
    plain = pd.read_csv(next((tmp_path / "plain").glob("predictions.csv")))
    adapted = pd.read_csv(next((tmp_path / "adapted").glob("predictions.csv")))
    p_cols = [c for c in plain.columns if c.startswith("p_")]
    assert len(plain) == len(adapted) > 0
    assert np.abs(plain[p_cols].to_numpy() - adapted[p_cols].to_numpy()).max() > 1e-3
    main(["test", *common, "--adapt", str(target)])
    assert "adapt: BatchNorm statistics" in capsys.readouterr().out
    assert _digest(best) == digest  # test/predict --adapt never rewrite the checkpoint


@pytest.mark.slow
def test_export_adapt_writes_the_adapted_model(run, target, tmp_path, capsys):
    best = run / "checkpoints" / "best.ckpt"
    common = ["--config", str(run / "config.yaml"), "--ckpt_path", str(best)]
    main(["export", *common, "--adapt", str(target), "--output", str(tmp_path / "export")])
    assert "adapt: BatchNorm statistics of 2 layers" in capsys.readouterr().out
    meta = read_onnx_metadata(tmp_path / "export" / "model.onnx")
    assert '"layers": 2' in meta.extra["batchnorm_adapted"]
    original = read_onnx_metadata(run / "export" / "model.onnx")
    assert "batchnorm_adapted" not in original.extra


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_adapt_is_refused_where_it_means_nothing(subcommand, tiny_args, target, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", CNN, *tiny_args, "--adapt", str(target)])
    assert exit_info.value.code == 2
    assert "--adapt applies to test, predict, export" in capsys.readouterr().err


def test_a_missing_adapt_path_is_named(run, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    best = run / "checkpoints" / "best.ckpt"
    with pytest.raises(SystemExit):
        main(
            [
                "test",
                "--config",
                str(run / "config.yaml"),
                "--ckpt_path",
                str(best),
                "--adapt",
                str(missing),
            ]
        )
    assert f"{missing}: --adapt: no such file or folder" in capsys.readouterr().err
