"""Ours against the Keras stack we replace: training windows per second on the CPU.

With ``--vs-keras``: the same front end in Keras (``tf.signal.stft`` of the reflect-padded
window, mel projection, dB with an 80 dB floor, the same normalisation statistics) and the same
layers, ``model.fit`` on the same in-memory windows, batch, epochs and validation data, in a
subprocess of ``--keras-python`` (an interpreter with tensorflow). Records ``train_keras_<model>``
and ``train_ratio_ours_keras_<model>`` (ours / Keras, Keras' speed from the median of at least
three epochs after the first, which traces the graph). Targets (issue 7): >= 1.2 for the CNN,
>= 1.0 for the ResNet.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    CHANNELS,
    ENTRY_POINT,
    FRONTEND,
    REPO,
    SAMPLE_RATE,
    WINDOW,
    Recorder,
    at_least,
    rounded,
)
from .training import TrainSetup, model_params

TARGET_KERAS_RATIO = {"cnn": 1.2, "resnet": 1.0}
#: Measured Keras epochs per model at least (after the excluded first one).
KERAS_EPOCHS = 3


def keras_worker(spec_file: str) -> int:
    """Train the Keras CNN or ResNet on the saved windows; print one JSON line of epoch times.

    Args:
        spec_file: the JSON file ``bench_keras`` wrote (windows file, model, front end, batch).
    """
    spec = json.loads(Path(spec_file).read_text())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    data = np.load(spec["data"])
    fe = spec["frontend"]
    pad = fe["n_fft"] // 2
    mel = tf.signal.linear_to_mel_weight_matrix(
        fe["n_mels"], fe["n_fft"] // 2 + 1, fe["sample_rate"], fe["f_min"], fe["f_max"]
    )
    mean = tf.constant(data["mean"].reshape(1, -1, 1, 1), tf.float32)
    std = tf.constant(data["std"].reshape(1, -1, 1, 1), tf.float32)

    class LogMel(keras.layers.Layer):
        """Reflect-padded STFT power, mel projection, dB with top_db, per-channel normalisation."""

        def call(self, x: Any) -> Any:
            x = tf.pad(x, [[0, 0], [0, 0], [pad, pad]], mode="REFLECT")
            stft = tf.signal.stft(x, fe["n_fft"], fe["hop_length"], fe["n_fft"])
            power = tf.math.square(tf.math.abs(stft))  # (B, C, frames, bins)
            db = 10.0 * tf.math.log(tf.maximum(tf.tensordot(power, mel, 1), 1e-10)) / math.log(10)
            db = tf.maximum(db, tf.reduce_max(db, axis=[1, 2, 3], keepdims=True) - fe["top_db"])
            db = (tf.transpose(db, [0, 1, 3, 2]) - mean) / std  # (B, C, mels, frames)
            return tf.transpose(db, [0, 2, 3, 1])  # channels last: (B, mels, frames, C)

    layers = keras.layers

    def conv_bn_relu(x: Any, width: int, stride: int = 1, relu: bool = True) -> Any:
        x = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    arch = spec["arch"]
    inputs = keras.Input((spec["channels"], spec["window"]))
    x = LogMel()(inputs)
    if spec["kind"] == "cnn":
        for width in arch["widths"]:
            x = layers.MaxPool2D(2)(conv_bn_relu(x, width))
    else:
        x = layers.MaxPool2D(3, strides=2, padding="same")(conv_bn_relu(x, arch["stem_width"]))
        channels = arch["stem_width"]
        for stage, (width, blocks) in enumerate(
            zip(arch["widths"], arch["blocks_per_stage"], strict=True)
        ):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                body = conv_bn_relu(conv_bn_relu(x, width, stride), width, relu=False)
                shortcut = x
                if stride != 1 or channels != width:
                    shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False)(x)
                    shortcut = layers.BatchNormalization()(shortcut)
                x = layers.ReLU()(layers.Add()([body, shortcut]))
                channels = width
    x = layers.Dropout(arch["dropout"])(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, layers.Dense(spec["num_classes"])(x))
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=0.002, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

            self.cpu_times: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self._start[0])
            self.cpu_times.append(time.process_time() - self._start[1])

    timer = Timer()
    model.fit(
        data["train_x"],
        data["train_y"],
        batch_size=spec["batch_size"],
        epochs=spec["epochs"],
        validation_data=(data["val_x"], data["val_y"]),
        validation_batch_size=spec["batch_size"],
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )
    print(json.dumps({"epoch_seconds": timer.times, "epoch_cpu_seconds": timer.cpu_times,
                      "tensorflow": tf.__version__,
                      "keras": keras.__version__, "jit_compile": str(model.jit_compile),
                      "parameters": int(model.count_params())}), flush=True)  # fmt: skip
    return 0


def find_keras_python(requested: str | None) -> tuple[str | None, str]:
    """The interpreter that runs Keras, or ``None`` and the reason none is usable."""
    candidates = [requested] if requested else [sys.executable]
    for exe in candidates:
        probe = subprocess.run(
            [exe, "-c", "import tensorflow, keras"], capture_output=True, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
        if probe.returncode == 0:
            return exe, ""
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "failed"
        return None, (
            f"{exe} cannot import tensorflow ({reason}); install the 'bench' extra "
            "(pip install -e '.[bench]') or pass --keras-python of an environment with "
            "tensorflow-cpu"
        )
    return None, "no interpreter given"


def bench_keras(rec: Recorder, setup: TrainSetup, kinds: list[str], ours: dict[str, float],
                keras_python: str | None) -> None:  # fmt: skip
    """Ours vs the same layers in Keras ``model.fit`` on the same windows (CPU)."""
    import numpy as np

    exe, why = find_keras_python(keras_python)
    if exe is None:
        raise RuntimeError(why)
    state = setup.frontend_state
    data = setup.run_root / "keras-windows.npz"
    np.savez(data, train_x=setup.windows["train"][0], train_y=setup.windows["train"][1],
             val_x=setup.windows["val"][0], val_y=setup.windows["val"][1],
             mean=state["mean"].numpy(), std=state["std"].numpy())  # fmt: skip
    n_train = len(setup.windows["train"][0])
    for kind in kinds:
        spec = {"data": str(data), "kind": kind, "arch": model_params(kind, setup.size),
                "frontend": {**FRONTEND, "sample_rate": SAMPLE_RATE, "top_db": 80.0},
                "channels": len(CHANNELS), "window": WINDOW, "num_classes": setup.num_classes,
                # Keras traces its graph in the first epoch, excluded; of the others (at least
                # KERAS_EPOCHS: one Keras epoch moved 0.85-1.55 s between runs) the median counts.
                "batch_size": setup.size.batch_size,
                "epochs": max(setup.size.epochs, KERAS_EPOCHS) + 1}  # fmt: skip
        spec_file = setup.run_root / f"keras-{kind}.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run(
            [exe, str(ENTRY_POINT), "--keras-worker", str(spec_file)],
            capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"the Keras {kind} run failed:\n{proc.stderr.strip()[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        keras_speed = n_train / statistics.median(out["epoch_seconds"][1:])
        versions = {k: out[k] for k in ("tensorflow", "keras", "jit_compile", "parameters")}
        params = {**setup.params(kind, False), "keras_python": exe, **versions}
        rec.emit(f"train_keras_{kind}", rounded(keras_speed, 2), "windows/s", params, device="cpu",
                 epoch_seconds=[rounded(t) for t in out["epoch_seconds"]],
                 epoch_cpu_seconds=[rounded(t) for t in out["epoch_cpu_seconds"]],
                 what="Keras model.fit: tf.signal log-mel + the same layers")  # fmt: skip
        ratio = ours[kind] / keras_speed
        target = TARGET_KERAS_RATIO[kind]
        keras_cpu_speed = n_train / statistics.median(out["epoch_cpu_seconds"][1:])
        cpu_ratio = ours[f"{kind}_cpu"] / keras_cpu_speed
        rec.emit(f"train_ratio_ours_keras_{kind}", rounded(ratio), "ratio", params, target=target,
                 met=at_least(ratio, target), device="cpu",
                 ratio_cpu_time=rounded(cpu_ratio))  # fmt: skip
