"""int8 export: onnxruntime static quantisation of the network, the front end kept in float,
verified against the float model on test windows; a failed verification leaves no file; the
torch-free predictor runs the int8 model."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from damage_lightning.card import ExportEntry
from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.deploy.predict import predict
from damage_lightning.deploy.session import OnnxModel
from damage_lightning.errors import ExportVerificationError
from damage_lightning.export import (
    DeployableModel,
    ModelMetadata,
    QuantizationData,
    export_all,
    verify_int8,
)
from damage_lightning.export import folder as export_folder
from damage_lightning.export.int8 import INT8_FILE, QUANTIZATION_KEY, frontend_nodes

SR, WINDOW, CHANNELS = 512.0, 256, ("a", "b")
CLASSES = ["low", "mid", "high"]
TONES = (40.0, 90.0, 150.0)  # Hz, one per class


def _windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy tones of a class's frequency (random level, phase and sensor offset)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    t = np.arange(WINDOW) / SR
    freq = np.asarray(TONES)[labels][:, None, None] * rng.uniform(0.95, 1.05, (n, 1, 1))
    phase = rng.uniform(0, 2 * math.pi, (n, len(CHANNELS), 1))
    level = 10 ** rng.uniform(-1, 1, (n, 1, 1))
    x = level * (np.sin(2 * math.pi * freq * t + phase) + 0.5 * rng.normal(size=(n, 2, WINDOW)))
    x += rng.normal(scale=0.2, size=(n, len(CHANNELS), 1))
    return x.astype(np.float32), labels.astype(np.int64)


class BandNet(nn.Module):
    """Convolution, ReLU, mean over time, then a linear layer that sees each frequency row."""

    def __init__(self, channels: int, n_freqs: int, n_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.head = nn.Linear(4 * n_freqs, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=3).flatten(1))


def _trained(stft: str) -> tuple[DeployableModel, QuantizationData]:
    """A small network trained in a plain loop until its classes are well apart."""
    x_train, y_train = _windows(384, seed=0)
    x_test, y_test = _windows(240, seed=1)
    frontend = SpectrogramFrontend(SR, len(CHANNELS), kind="stft", n_fft=64, hop_length=16,
                                   stft=stft)  # fmt: skip
    frontend.fit_normalization([torch.from_numpy(x_train)])
    torch.manual_seed(0)
    net = BandNet(len(CHANNELS), frontend.n_freqs, len(CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    features = frontend(torch.from_numpy(x_train)).detach()
    labels = torch.from_numpy(y_train)
    net.train()
    for step in range(150):
        idx = torch.arange(step * 32, step * 32 + 32) % len(features)
        loss = F.cross_entropy(net(features[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = DeployableModel(frontend, net).eval()
    return model, QuantizationData(x_train[:128], x_test, y_test)


def _metadata(model: DeployableModel) -> ModelMetadata:
    return ModelMetadata(CLASSES, list(CHANNELS), SR, WINDOW, WINDOW // 2,
                         model.frontend.settings())  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, data = _trained("conv")
    out = tmp_path_factory.mktemp("int8")
    return model, data, out, export_all(model, out, _metadata(model), int8=data)


def test_int8_export_is_verified_against_the_float_model(exported) -> None:
    _, data, out, result = exported
    entry = ExportEntry.from_json(result["int8"], where="exports.int8")
    assert entry.path == str(out / INT8_FILE) and (out / INT8_FILE).is_file()
    ver = entry.verification
    assert ver.passed and ver.reference == "model.onnx" and ver.test_windows == len(data.test)
    assert ver.agreement >= ver.min_agreement == 0.99
    assert ver.accuracy_drop_points <= ver.max_accuracy_drop_points == 0.5
    assert ver.accuracy_reference > 0.9  # the float model learned the tones
    q = entry.quantization
    assert q.calibration_windows == 128 and q.calibration_split == "train"
    assert "QDQ" in q.scheme and "per-channel" in q.scheme
    # (This tiny network's int8 file is no smaller: the front end's float DFT basis dominates.)
    assert q.int8_model.size_bytes == entry.size_bytes
    assert q.float_model.size_bytes == result["onnx"]["size_bytes"]
    for speed in (q.float_model, q.int8_model):
        assert speed.latency_ms_batch1 > 0 and speed.throughput_windows_per_s > 0
    assert q.size_ratio == pytest.approx(q.int8_model.size_bytes / q.float_model.size_bytes, 1e-3)
    # The card's record round-trips.
    assert ExportEntry.from_json(entry.to_json()).to_json() == entry.to_json()


def test_front_end_stays_float_and_network_is_quantised(exported) -> None:
    _, _, out, _ = exported
    float_model, int8_model = onnx.load(out / "model.onnx"), onnx.load(out / INT8_FILE)
    kept = set(frontend_nodes(float_model))
    nodes = {n.name: n for n in int8_model.graph.node}
    produced_by = {o: n.op_type for n in int8_model.graph.node for o in n.output}
    for name in kept:
        # Same node, fed by float tensors only (no DequantizeLinear in front of it).
        assert name in nodes
        assert all(produced_by.get(i) != "DequantizeLinear" for i in nodes[name].input), name
    quantised_convs = [
        n for n in int8_model.graph.node
        if n.op_type == "Conv" and n.name not in kept
        and all(produced_by.get(i) == "DequantizeLinear" for i in n.input[:2])
    ]  # fmt: skip
    assert len(quantised_convs) == 1  # the network's one convolution


def test_predictor_runs_the_int8_model(exported, tmp_path) -> None:
    out = exported[2]
    float_model, int8_model = OnnxModel.load(out / "model.onnx"), OnnxModel.load(out / INT8_FILE)
    # The same metadata as the float model, plus how it was quantised.
    extra = dict(int8_model.metadata.extra)
    built = json.loads(extra.pop(QUANTIZATION_KEY))
    assert built["calibration_windows"] == 128
    assert int8_model.metadata.class_names == CLASSES
    assert dict(float_model.metadata.extra) == extra
    # Two recordings per class, one CSV each, 8 windows apiece.
    rng = np.random.default_rng(7)
    t = np.arange(WINDOW * 4) / SR
    for label, tone in zip(CLASSES, TONES, strict=True):
        (tmp_path / label).mkdir()
        for i in range(2):
            data = {"time": t}
            for c in CHANNELS:
                data[c] = np.sin(2 * math.pi * tone * t + rng.uniform(0, 6)) + rng.normal(
                    scale=0.3, size=len(t)
                )
            pd.DataFrame(data).to_csv(tmp_path / label / f"rec{i}.csv", index=False)
    got = predict(int8_model, tmp_path, batch_size=3).recordings
    want = predict(float_model, tmp_path, batch_size=3).recordings
    assert list(got["predicted_label"]) == list(want["predicted_label"]) == list(got["label"])
    probs = [f"p_{c}" for c in CLASSES]
    assert np.abs(got[probs].to_numpy() - want[probs].to_numpy()).max() < 0.05


def test_failed_verification_fails_loudly_and_leaves_no_file(exported, tmp_path, monkeypatch):
    model, data, out, _ = exported
    # Criteria the model cannot meet fail with the reason.
    with pytest.raises(ExportVerificationError, match="agrees with the float model"):
        verify_int8(out / INT8_FILE, out / "model.onnx", data, min_agreement=1.01)
    strict = functools.partial(verify_int8, max_accuracy_drop_points=-1.0)
    monkeypatch.setattr(export_folder, "verify_int8", strict)
    target = tmp_path / "export"
    with pytest.raises(ExportVerificationError, match=r"model\.int8\.onnx.*accuracy drops"):
        export_all(model, target, _metadata(model), int8=data)
    assert not (target / INT8_FILE).exists()
    assert [p.name for p in target.iterdir() if "int8" in p.name] == []
    # The float exports before it were written and verified.
    assert (target / "model.onnx").is_file()


@pytest.mark.slow
def test_int8_of_the_torch_stft_front_end(tmp_path) -> None:
    # The STFT operator and the rest of the front end stay float; the network is quantised.
    model, data = _trained("torch")
    result = export_all(model, tmp_path, _metadata(model), int8=data)
    assert result["int8"]["verification"]["agreement"] >= 0.99
    ops = {n.op_type for n in onnx.load(tmp_path / INT8_FILE).graph.node}
    assert {"STFT", "QuantizeLinear", "DequantizeLinear"} <= ops
