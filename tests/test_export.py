"""Export: ONNX and TorchScript parity with the eager model, metadata, verification, atomic writes,
and rebuilding a model from a checkpoint."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchaudio
from torch import nn

import damage_lightning
from damage_lightning.artifacts import sha256_file
from damage_lightning.deploy.session import read_onnx_metadata
from damage_lightning.errors import DataValidationError, ExportVerificationError
from damage_lightning.export import (
    DeployableModel,
    ModelMetadata,
    deployable_from_checkpoint,
    export_all,
    export_onnx,
    export_torchscript,
    load_from_checkpoint,
    read_torchscript_metadata,
    verify_onnx,
    verify_torchscript,
)

CHANNELS = ["floor<1>", "tab\there\nnewline", "Ω-sensor"]
CLASSES = ["<b>&amp;</b>", "ctrl\x00\x07\x1b[31m", "שלום \u202eRTL", "n" * 2000]
WINDOW = 256
SAMPLE_RATE = 512.0
HOP = 128
EXTRA = {"note": "<script>alert('x')</script> & ]]>", "sizes": "[1, 2, 3]"}


class StandInFrontend(nn.Module):
    """Log-mel spectrogram with per-channel normalisation buffers, like the real front end."""

    def __init__(self, n_channels: int, sample_rate: float = SAMPLE_RATE):
        super().__init__()
        self._settings = {"kind": "mel", "n_fft": 64, "hop_length": 16, "n_mels": 16}
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=int(sample_rate), n_fft=64, hop_length=16, n_mels=16
        )
        self.register_buffer("mean", torch.zeros(n_channels))
        self.register_buffer("std", torch.ones(n_channels))
        self.register_buffer("fitted", torch.tensor(False))

    def settings(self) -> dict:
        return dict(self._settings)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.log(self.mel(waveform) + 1e-6)
        return (spec - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def tiny_net(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, num_classes),
    )


def standin_model(seed: int = 0, n_channels: int = 3, n_classes: int = 4) -> DeployableModel:
    torch.manual_seed(seed)
    frontend = StandInFrontend(n_channels)
    frontend.mean.copy_(torch.randn(n_channels))
    frontend.std.copy_(torch.rand(n_channels) + 0.5)
    frontend.fitted.fill_(True)
    return DeployableModel(frontend, tiny_net(n_channels, n_classes)).eval()


def waveforms(batch: int, channels: int = 3, window: int = WINDOW, seed: int = 123):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, window, generator=gen) * 2.0


def eager(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits, probs = model(x)
    return logits.numpy(), probs.numpy()


@pytest.fixture(scope="module")
def metadata() -> ModelMetadata:
    return ModelMetadata(
        CLASSES, CHANNELS, SAMPLE_RATE, WINDOW, HOP, StandInFrontend(3).settings(), extra=EXTRA
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, metadata):
    """One export_all of the stand-in model with hostile names, shared by the tests below."""
    model = standin_model()
    out = tmp_path_factory.mktemp("export")
    result = export_all(model, out, metadata)
    return model, out, result


def test_export_all_writes_verified_self_describing_folder(exported, metadata):
    model, out, result = exported
    assert sorted(os.listdir(out)) == [
        "labels.json",
        "model.onnx",
        "model.ts.pt",
        "preprocessing.json",
    ]  # one self-contained ONNX file, no external data, no leftovers
    for key, runtime in (("onnx", "onnxruntime "), ("torchscript", "torch.jit ")):
        entry = result[key]
        assert entry["sha256"] == sha256_file(entry["path"])
        assert entry["size_bytes"] == Path(entry["path"]).stat().st_size
        assert entry["export_time_s"] > 0
        ver = entry["verification"]
        assert ver["passed"] is True and ver["batch_sizes"] == [1, 5]
        assert 0 <= ver["max_abs_diff"] <= 1e-4 and 0 <= ver["max_abs_diff_logits"] <= 1e-4
        assert ver["runtime"].startswith(runtime)
    assert json.loads((out / "labels.json").read_text(encoding="utf-8")) == CLASSES
    assert result["labels"]["sha256"] == sha256_file(out / "labels.json")
    pre = json.loads((out / "preprocessing.json").read_text(encoding="utf-8"))
    assert pre["channels"] == CHANNELS and pre["window_length"] == WINDOW and pre["hop"] == HOP
    assert pre["sample_rate"] == SAMPLE_RATE
    assert pre["input"]["shape"] == ["batch", 3, WINDOW]
    assert pre["normalization"]["mean"] == pytest.approx(model.frontend.mean.tolist())
    assert pre["normalization"]["std"] == pytest.approx(model.frontend.std.tolist())
    assert pre["frontend"] == model.frontend.settings()


def test_onnx_matches_eager_at_any_batch_size(exported):
    model, out, _ = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "waveform" and isinstance(inp.shape[0], str)  # batch axis is symbolic
    assert inp.shape[1:] == [3, WINDOW]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    for batch in (1, 5, 7):
        x = waveforms(batch, seed=batch)
        logits, probs = session.run(None, {"waveform": x.numpy()})
        ref_logits, ref_probs = eager(model, x)
        assert probs.shape == (batch, 4) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # A single window gives the same answer alone and inside a batch.
    x = waveforms(5, seed=99)
    _, batch_probs = session.run(None, {"waveform": x.numpy()})
    _, one_probs = session.run(None, {"waveform": x[2:3].numpy()})
    np.testing.assert_allclose(one_probs[0], batch_probs[2], atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_matches_eager_and_carries_metadata(exported, metadata):
    model, out, _ = exported
    extra = {"metadata.json": ""}
    loaded = torch.jit.load(str(out / "model.ts.pt"), _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == metadata.to_props()
    assert read_torchscript_metadata(out / "model.ts.pt") == read_onnx_metadata(out / "model.onnx")
    for batch in (1, 5, 7):
        x = waveforms(batch, seed=10 + batch)
        with torch.no_grad():
            logits, probs = loaded(x)
        ref_logits, ref_probs = eager(model, x)
        np.testing.assert_allclose(probs.numpy(), ref_probs, atol=1e-5)
        np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-4)


def test_onnx_metadata_round_trips_hostile_text(exported, metadata):
    _, out, _ = exported
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    written = metadata.to_props()
    assert {k: props[k] for k in written} == written
    meta = read_onnx_metadata(out / "model.onnx")
    assert meta == metadata
    assert meta.class_names == CLASSES  # markup, NUL/control chars, RTL, 2000 characters
    assert meta.channels == CHANNELS
    assert meta.sample_rate == SAMPLE_RATE and isinstance(meta.sample_rate, float)
    assert meta.window_length == WINDOW and meta.hop == HOP
    assert meta.frontend == StandInFrontend(3).settings()
    assert meta.version == damage_lightning.__version__
    assert meta.extra["note"] == EXTRA["note"]
    assert json.loads(meta.extra["sizes"]) == [1, 2, 3]


def test_metadata_validates_and_keeps_unencodable_text():
    # A lone surrogate (a badly decoded file name) cannot be UTF-8; it travels as a JSON escape.
    meta = ModelMetadata(["a\ud800", "b"], ["x"], 100, 64, 32, {}).to_props()
    assert json.loads(meta["class_names"]) == ["a\ud800", "b"]
    meta["class_names"].encode("utf-8")
    assert meta["sample_rate"] == "100.0" and meta["window_length"] == "64"
    bad_calls = [
        dict(class_names=["a", "a"]),
        dict(class_names=[]),
        dict(channels=[1, 2]),
        dict(sample_rate=math.nan),
        dict(sample_rate=0),
        dict(window_length=0),
        dict(hop=2.5),
        dict(class_names="ab"),
        dict(extra={"hop": "1"}),
        dict(extra={"model_class_path": "x.Y"}),
        dict(extra={"k": "\udcff"}),
    ]
    good = dict(
        class_names=["a", "b"],
        channels=["x"],
        sample_rate=100.0,
        window_length=64,
        hop=32,
        frontend={},
    )
    for change in bad_calls:
        with pytest.raises(ValueError):
            ModelMetadata(**{**good, **change}).to_props()


def test_verification_fails_loudly_for_a_different_model(exported):
    _, out, _ = exported
    other = standin_model(seed=1)
    with pytest.raises(ExportVerificationError, match=r"model\.onnx.*batch size 1.*differ"):
        verify_onnx(out / "model.onnx", other, channels=3, window=WINDOW)
    with pytest.raises(ExportVerificationError, match=r"model\.ts\.pt.*batch size 1.*differ"):
        verify_torchscript(out / "model.ts.pt", other, channels=3, window=WINDOW)


def test_verification_fails_for_damaged_files(exported, tmp_path):
    model, out, _ = exported
    for name, verify in (("model.onnx", verify_onnx), ("model.ts.pt", verify_torchscript)):
        damaged = tmp_path / name
        data = (out / name).read_bytes()
        damaged.write_bytes(data[: len(data) // 2])
        with pytest.raises(ExportVerificationError, match=r"cannot load"):
            verify(damaged, model, channels=3, window=WINDOW)


def test_verification_passes_the_original_model(exported):
    model, out, _ = exported
    result = verify_onnx(out / "model.onnx", model, 3, WINDOW, batch_sizes=(2, 7), seed=5)
    assert result["passed"] and result["batch_sizes"] == [2, 7]
    assert result["runtime"] == f"onnxruntime {ort.__version__}"


def test_failed_onnx_write_leaves_previous_file_intact(tmp_path, monkeypatch, metadata):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        export_onnx(standin_model(), target, metadata)
    with pytest.raises(OSError, match="No space"):
        export_torchscript(standin_model(), target, metadata)
    assert target.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["model.onnx"]


class NoisyNet(nn.Module):
    """Adds fresh noise to the logits: every run differs, so no export can verify."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits + 10.0 * torch.rand_like(logits)


def test_export_all_refuses_an_export_that_does_not_verify(exported, tmp_path, metadata):
    _, out, _ = exported
    shutil.copy(out / "model.onnx", tmp_path / "model.onnx")
    before = sha256_file(tmp_path / "model.onnx")
    model = DeployableModel(StandInFrontend(3), NoisyNet(tiny_net(3, 4))).eval()
    with pytest.raises(ExportVerificationError, match=r"model\.onnx.*not written"):
        export_all(model, tmp_path, metadata)
    assert sha256_file(tmp_path / "model.onnx") == before  # the previous export is still there
    assert os.listdir(tmp_path) == ["model.onnx"]


class UnscriptableNet(nn.Module):
    """Scripting rejects **kwargs; tracing handles it."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_net(3, 4)

    def forward(self, x: torch.Tensor, **options) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_falls_back_to_tracing(tmp_path, metadata):
    model = DeployableModel(standin_model().frontend, UnscriptableNet()).eval()
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.jit.script raises
        torch.jit.script(model)
    path = export_torchscript(model, tmp_path / "m.ts.pt", metadata)
    result = verify_torchscript(path, model, channels=3, window=WINDOW, batch_sizes=(1, 5, 7))
    assert result["passed"] and result["max_abs_diff"] <= 1e-5


def test_low_precision_net_still_gives_float32_probabilities():
    model = standin_model()
    model.net = model.net.to(torch.bfloat16)
    frontend = model.frontend
    model.frontend = nn.Sequential(frontend, _ToDtype(torch.bfloat16))
    logits, probs = model(waveforms(2))
    assert logits.dtype == torch.float32 and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))


class _ToDtype(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def test_export_does_not_change_the_callers_model(exported, tmp_path, metadata):
    model = standin_model()
    model.train()
    # export_all exports a CPU float32 copy; the export fixture proved the files. Here: the
    # caller's module keeps its mode and parameters after a TorchScript export of it.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_torchscript(model, tmp_path / "m.ts.pt", metadata)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------ real modules and checkpoints


def _real_modules():
    try:
        from damage_lightning.data.frontend import SpectrogramFrontend
        from damage_lightning.models.base import DamageClassifier
        from damage_lightning.models.cnn import CNNClassifier
    except ImportError as exc:  # pragma: no cover - only while the package is being assembled
        pytest.skip(f"damage_lightning.data.frontend / models do not import yet: {exc}")
    return SpectrogramFrontend, DamageClassifier, CNNClassifier


def _checkpoint(tmp_path: Path, class_path: str, hparams: dict, model: nn.Module, frontend):
    ckpt = {
        "epoch": 3,
        "state_dict": model.state_dict(),
        "hyper_parameters": hparams,
        "damage_lightning": {
            "model_class_path": class_path,
            "frontend_settings": frontend.settings(),
            "frontend_state": {
                "mean": frontend.mean.clone(),
                "std": frontend.std.clone(),
                "fitted": frontend.fitted.clone(),
            },
            "class_names": ["undamaged", "story1", "bumper"],
            "channels": ["base", "floor1"],
            "sample_rate": 512.0,
            "window": 512,
            "hop": 256,
        },
    }
    path = tmp_path / "best.ckpt"
    torch.save(ckpt, path)
    return path


def _fitted_frontend(SpectrogramFrontend):
    frontend = SpectrogramFrontend(
        sample_rate=512.0, n_channels=2, n_fft=64, hop_length=32, n_mels=16
    )
    torch.manual_seed(0)
    frontend.fit_normalization([torch.randn(4, 2, 512)])
    return frontend


def test_load_from_checkpoint_rebuilds_model_and_frontend(tmp_path):
    SpectrogramFrontend, _, CNNClassifier = _real_modules()
    frontend = _fitted_frontend(SpectrogramFrontend)
    hparams = {
        "num_classes": 3,
        "in_channels": 2,
        "input_shape": tuple(frontend.output_shape(512)),
        "class_names": ["undamaged", "story1", "bumper"],
        "widths": [4, 8],
        "dropout": 0.1,
    }
    torch.manual_seed(1)
    trained = CNNClassifier(**hparams).eval()
    path = _checkpoint(
        tmp_path, "damage_lightning.models.cnn.CNNClassifier", hparams, trained, frontend
    )

    model, loaded_frontend, spec = load_from_checkpoint(path)
    assert isinstance(model, CNNClassifier) and not model.training
    assert torch.equal(loaded_frontend.mean, frontend.mean)
    assert torch.equal(loaded_frontend.std, frontend.std) and bool(loaded_frontend.fitted)
    assert spec.class_names == ["undamaged", "story1", "bumper"]
    assert spec.channels == ["base", "floor1"] and spec.window == 512
    x = waveforms(3, channels=2, window=512)
    with torch.no_grad():
        torch.testing.assert_close(model(loaded_frontend(x)), trained(frontend(x)))

    deployable, dspec = deployable_from_checkpoint(path)
    with torch.no_grad():
        logits, _ = deployable(x)
        torch.testing.assert_close(logits, trained(frontend(x)))
    assert dspec.metadata().class_names == spec.class_names
    assert dspec.metadata().frontend == frontend.settings()
    assert dspec.metadata().model_class_path == "damage_lightning.models.cnn.CNNClassifier"


def test_load_from_checkpoint_refuses_foreign_classes_and_files(tmp_path):
    SpectrogramFrontend, _, _ = _real_modules()
    frontend = _fitted_frontend(SpectrogramFrontend)
    path = _checkpoint(tmp_path, "collections.OrderedDict", {}, nn.Linear(1, 1), frontend)
    with pytest.raises(DataValidationError, match="not a DamageClassifier subclass"):
        load_from_checkpoint(path)
    path = _checkpoint(tmp_path, "no_such_module_xyz.Model", {}, nn.Linear(1, 1), frontend)
    with pytest.raises(DataValidationError, match="cannot import"):
        load_from_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(DataValidationError, match="not a checkpoint written by damage_lightning"):
        load_from_checkpoint(path)
    # Pickled Python objects are never loaded (weights_only=True).
    torch.save({"state_dict": {}, "damage_lightning": {"x": Path("/")}, "obj": object()}, path)
    with pytest.raises(DataValidationError, match="weights-only"):
        load_from_checkpoint(path)
    with pytest.raises(DataValidationError, match="not found"):
        load_from_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("channels,window", [(4, 1024)])
def test_real_frontend_and_cnn_export_and_verify(tmp_path, channels, window):
    SpectrogramFrontend, _, CNNClassifier = _real_modules()
    frontend = SpectrogramFrontend(
        sample_rate=1024.0, n_channels=channels, n_fft=256, hop_length=64, n_mels=64
    )
    torch.manual_seed(0)
    frontend.fit_normalization([torch.randn(4, channels, window)])
    net = CNNClassifier(
        num_classes=3, in_channels=channels, input_shape=frontend.output_shape(window)
    ).net
    model = DeployableModel(frontend, net).eval()
    names = [f"ch{i}" for i in range(channels)]
    meta = ModelMetadata(["a", "b", "c"], names, 1024.0, window, window // 2, frontend.settings())
    result = export_all(model, tmp_path, meta)
    assert result["onnx"]["verification"]["max_abs_diff"] <= 1e-4
    assert result["torchscript"]["verification"]["max_abs_diff"] <= 1e-4
    assert read_onnx_metadata(tmp_path / "model.onnx").frontend == frontend.settings()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_temperature_and_abstain_survive_export(tmp_path, metadata):
    """The calibrated model (logits / T) and its window ``unknown`` flag, ONNX and TorchScript."""
    from damage_lightning.export.deployable import AbstainingModel

    plain = standin_model(seed=4)
    model = AbstainingModel(plain.frontend, plain.net, temperature=2.5, abstain=0.4).eval()
    result = export_all(model, tmp_path, metadata)
    assert result["onnx"]["verification"]["passed"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities", "unknown"]
    scripted = torch.jit.load(str(tmp_path / "model.ts.pt"))
    for batch in (1, 9):
        x = waveforms(batch, seed=40 + batch)
        with torch.no_grad():
            raw = plain(x)[0].numpy()
            ref_logits, ref_probs, ref_unknown = (t.numpy() for t in model(x))
            ts = [t.numpy() for t in scripted(x)]
        np.testing.assert_allclose(ref_logits, raw / 2.5, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ref_unknown, ref_probs.max(axis=1) < 0.4)
        onnx_out = session.run(None, {"waveform": x.numpy()})
        for got in (onnx_out, ts):
            np.testing.assert_allclose(got[0], ref_logits, atol=1e-4)
            np.testing.assert_allclose(got[1], ref_probs, atol=1e-5)
            np.testing.assert_array_equal(got[2], ref_unknown)
    # A softer (calibrated) model is less sure than the raw network, never more.
    x = waveforms(16, seed=7)
    with torch.no_grad():
        assert (model(x)[1].max(dim=1).values <= plain(x)[1].max(dim=1).values + 1e-6).all()
    with pytest.raises(ValueError, match="temperature"):
        DeployableModel(plain.frontend, plain.net, temperature=0.0)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_distance_gate_survives_export(tmp_path, metadata):
    """Feature distance and ``unknown`` of the gated model: eager = numpy = ONNX = TorchScript."""
    from damage_lightning.export.deployable import DistanceGatedModel

    plain = standin_model(seed=5)
    body, head = plain.net[:-1], plain.net[-1]
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(4, 6, generator=gen)
    a = torch.randn(6, 6, generator=gen)
    precision = a @ a.t() + 0.5 * torch.eye(6)
    model = DistanceGatedModel(plain.frontend, plain.net, 1.7, None, means, precision, 3.0)
    model.eval()
    export_all(model, tmp_path, metadata)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [
        "logits",
        "probabilities",
        "unknown",
        "distance",
    ]
    scripted = torch.jit.load(str(tmp_path / "model.ts.pt"))
    for batch in (1, 9):
        x = waveforms(batch, seed=60 + batch)
        with torch.no_grad():
            features = body(plain.frontend(x)).double().numpy()
            ref = [t.numpy() for t in model(x)]
            ts = [t.numpy() for t in scripted(x)]
            np.testing.assert_allclose(
                ref[0], head(body(plain.frontend(x))).numpy() / 1.7, rtol=1e-5
            )
        diff = features[:, None, :] - means.double().numpy()[None]
        expected = np.einsum("nkd,de,nke->nk", diff, precision.double().numpy(), diff).min(axis=1)
        np.testing.assert_allclose(ref[3], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(ref[2], ref[3] > 3.0)  # no probability floor
        for got in (session.run(None, {"waveform": x.numpy()}), ts):
            np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
            np.testing.assert_allclose(got[3], ref[3], rtol=1e-4, atol=1e-3)
            np.testing.assert_array_equal(got[2], ref[2])
