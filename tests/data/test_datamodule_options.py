"""DamageDataModule options do what they say: defaults of configs/cnn.yaml, class weights on and
off, num_workers prefetching; and model metadata errors name the file first."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

from damage_lightning.data import windows
from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.data.prefetch import PrefetchingWindowLoader, prefetch
from damage_lightning.deploy.metadata import ModelMetadata
from damage_lightning.errors import DataValidationError

CNN_DATA = yaml.safe_load((REPO / "configs" / "cnn.yaml").read_text())["data"]
SMALL = {"window": 256, "hop": 128, "n_fft": 64, "hop_length": 16, "f_max": None}


def _dm(tiny_data, cache_dir, **kwargs) -> DamageDataModule:
    return DamageDataModule(
        data_dir=str(tiny_data), cache_dir=str(cache_dir), batch_size=16, **{**SMALL, **kwargs}
    )


# --------------------------------------------------------------------------------- defaults
def test_a_bare_datamodule_has_the_data_settings_of_cnn_yaml():
    # ... except the training recipe: augmentation is off unless asked for (cnn.yaml asks for
    # speed jitter), so a DataModule built in a notebook never alters windows unannounced.
    dm = DamageDataModule()
    assert CNN_DATA, "configs/cnn.yaml has no data section"
    # hop=None means half a window: compare what the module uses.
    effective = {**dm.hparams, "hop": dm.hop}
    recipe = {k: v for k, v in CNN_DATA.items() if k.startswith("augment_")}
    assert recipe == {"augment_speed": 0.03}
    assert not dm.augment.enabled
    for key, value in CNN_DATA.items():
        if key not in recipe:
            assert effective[key] == value, key


def test_a_bare_datamodule_builds_the_front_end_cnn_yaml_builds(tiny_data, cache_dir):
    # Same data for both (the front end needs a sample rate), nothing else given: the defaults.
    common = {"data_dir": str(tiny_data), "cache_dir": str(cache_dir)}
    bare = DamageDataModule(**common)
    configured = DamageDataModule(**{**CNN_DATA, **common})
    assert bare.frontend_settings() == configured.frontend_settings()
    assert bare.input_shape == configured.input_shape
    fe = bare._build_frontend()
    assert (fe.kind, fe.n_fft, fe.hop_length, fe.f_max) == ("stft", 512, 64, 300.0)


# ----------------------------------------------------------------------------- class weights
def test_class_weights_are_offered_only_when_asked_for(tiny_data, cache_dir):
    off = _dm(tiny_data, cache_dir)
    assert off.class_weight_tensor() is None
    on = _dm(tiny_data, cache_dir, class_weights=True)
    weights = on.class_weight_tensor()
    assert on.hparams.class_weights is True  # the option is no longer shadowed by a property
    labels = on._labels[on.indices["train"][:, 0]]
    counts = np.bincount(labels, minlength=on.num_classes)
    expected = counts.sum() / (on.num_classes * counts)
    assert weights.dtype == torch.float32 and weights.shape == (on.num_classes,)
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float32))


# ------------------------------------------------------------------------------- num_workers
def test_num_workers_gathers_the_same_batches_in_a_background_thread(
    tiny_data, cache_dir, monkeypatch
):
    threads: list[str] = []
    real = windows.WindowBatchLoader._host_batches

    def recording(self, positions: np.ndarray) -> Iterator:
        for batch in real(self, positions):
            threads.append(threading.current_thread().name)
            yield batch

    monkeypatch.setattr(windows.WindowBatchLoader, "_host_batches", recording)
    plain = _dm(tiny_data, cache_dir).train_dataloader()
    threads.clear()
    assert not isinstance(plain, PrefetchingWindowLoader)
    plain.set_epoch(3)
    expected = list(plain)
    assert set(threads) == {threading.current_thread().name}

    loader = _dm(tiny_data, cache_dir, num_workers=2).train_dataloader()
    threads.clear()  # setup's normalisation pass gathered in this thread
    assert isinstance(loader, PrefetchingWindowLoader) and loader.depth == 4
    loader.set_epoch(3)
    got = list(loader)
    assert threads and set(threads) == {"damage-lightning-prefetch"}
    assert len(got) == len(expected) == len(loader)
    for a, b in zip(got, expected, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_num_workers_must_not_be_negative():
    with pytest.raises(ValueError, match="num_workers must be 0 or more"):
        DamageDataModule(num_workers=-1)


def test_prefetch_runs_ahead_of_the_consumer_and_keeps_order():
    produced = [threading.Event() for _ in range(4)]

    def source() -> Iterator[int]:
        for i in range(4):
            produced[i].set()
            yield i

    it = prefetch(source(), depth=2)
    assert next(it) == 0
    # Without the consumer asking, the producer gathers the next two (the queue's depth).
    assert produced[2].wait(timeout=60)
    assert list(it) == [1, 2, 3]


def test_prefetch_raises_the_producers_error_and_stops_when_abandoned():
    def failing() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    it = prefetch(failing(), depth=1)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)

    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    it = prefetch(endless(), depth=3)
    assert next(it) == 0
    it.close()  # joins the producer: it must not be left blocked on a full queue
    assert not [t for t in threading.enumerate() if t.name == "damage-lightning-prefetch"]
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetch(iter([1]), depth=0))


# ------------------------------------------------------------------------- export error fields
@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({}, "missing entries"),
        (
            {"class_names": "[", "channels": "[]", "sample_rate": "1", "window_length": "2",
             "hop": "1", "frontend": "{}", "damage_lightning_version": "0"},
            "malformed entry",
        ),
        (
            {"class_names": "{}", "channels": "[]", "sample_rate": "1", "window_length": "2",
             "hop": "1", "frontend": "{}", "damage_lightning_version": "0"},
            "class_names must be a list of names",
        ),
    ],
)  # fmt: skip
def test_metadata_errors_name_the_file_first(meta, reason):
    with pytest.raises(DataValidationError) as info:
        ModelMetadata.from_props(meta, "gateway/model.onnx")
    (problem,) = info.value.problems
    assert (problem.file, problem.location) == ("gateway/model.onnx", "metadata")
    assert reason in problem.reason
    assert str(info.value).startswith("gateway/model.onnx (metadata): ")


def test_an_unloadable_onnx_file_is_named_first(tmp_path):
    from damage_lightning.deploy.session import read_onnx_metadata

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataValidationError) as info:
        read_onnx_metadata(bad)
    assert str(info.value).startswith(f"{bad}: onnxruntime cannot load the model")
