"""Throughput and memory of the deployed path: the torch-free predictor over one hour of data.

Section ``gateway``: one hour of 4-channel 1 kHz vibration (a CSV written once into the workdir)
scored by ``damage_lightning.deploy.predict`` with the default CNN behind the default front end
(4 x 1024-sample windows, hop 512, 2 Hz STFT bins up to 300 Hz), each model in a fresh child
process that imports only numpy, pandas, pyarrow and onnxruntime: the float model with the
``torch.stft`` front end, the float model with the portable conv front end, and that model
quantised to int8 (``export.int8.export_int8``). Records ``gateway_<model>_windows_per_s`` (read,
window, score, aggregate: the whole ``predict`` call), ``gateway_<model>_peak_memory`` (the
child's ``VmHWM``) and ``gateway_<model>_scoring_memory`` (its growth after the file was read).
Targets: the memory the predictor adds to the loaded model (after one batch, which sizes
onnxruntime's arena) stays within the CSV file's size plus one batch of windows; scoring, a batch
at a time, adds less than the file's windows would take at once (``all_windows_mb``); and int8 is
no slower than the float model it was quantised from (``gateway_int8_speedup`` >= 1). The
network's weights are untrained (the speed of a graph does not depend on them), so the int8 model
is built without its accuracy verification.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import ENTRY_POINT, REPO, Recorder, at_least, rounded, vm_hwm_mb

SAMPLE_RATE = 1000.0
CHANNELS = ("base", "floor1", "floor2", "floor3")
HOUR_S = 3600.0
WINDOW, HOP, BATCH = 1024, 512, 64
FRONTEND = {"kind": "stft", "n_fft": 512, "hop_length": 64, "f_max": 300.0}
MODELS = ("float_torch_stft", "float_conv", "int8_conv")
TARGET_INT8_SPEEDUP = 1.0


def recording_csv(workdir: Path, seconds: float = HOUR_S) -> Path:
    """``seconds`` of 4-channel 1 kHz vibration as CSV (written once; ``time`` column in s)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = int(seconds * SAMPLE_RATE)
    path = workdir / "gateway" / f"{seconds:g}s_4ch_1khz.csv"
    done = path.with_suffix(".done")
    if done.is_file() and path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(n) / SAMPLE_RATE
    columns = {"time": t}
    for i, name in enumerate(CHANNELS):
        # Three modes drifting slowly in frequency and level, plus sensor noise and an offset.
        wave = np.zeros(n)
        for f in (60.0, 167.0, 241.0):
            drift = 1 + 0.01 * np.sin(2 * np.pi * t / 900.0 + i)
            wave += (0.2 + 0.1 * i) * np.sin(2 * np.pi * f * drift * t + rng.uniform(0, 6))
        wave += 0.3 * rng.standard_normal(n) + 0.05 * i
        columns[name] = np.round(wave, 6).astype(np.float32)
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(pa.table(columns), tmp)
    tmp.replace(path)
    done.write_text("ok\n")
    return path


def build_models(csv: Path, out: Path) -> dict[str, Path]:
    """The three ONNX models of the section, exported from one network."""
    import numpy as np
    import torch

    from damage_lightning.data.frontend import SpectrogramFrontend
    from damage_lightning.deploy.metadata import ModelMetadata
    from damage_lightning.export import DeployableModel, QuantizationData, export_int8, export_onnx
    from damage_lightning.io.dataset import load_recording
    from damage_lightning.io.discovery import find_recordings
    from damage_lightning.models import CNNClassifier

    out.mkdir(parents=True, exist_ok=True)
    wave = load_recording(find_recordings(csv)[0], list(CHANNELS), SAMPLE_RATE).data
    starts = np.linspace(0, wave.shape[1] - WINDOW, 256).astype(int)
    windows = np.stack([wave[:, s : s + WINDOW] for s in starts]).astype(np.float32)
    torch.manual_seed(0)
    paths = {}
    net = None
    for impl, name in (("torch", "float_torch_stft"), ("conv", "float_conv")):
        frontend = SpectrogramFrontend(SAMPLE_RATE, len(CHANNELS), stft=impl, **FRONTEND)
        frontend.fit_normalization([torch.from_numpy(windows)])
        if net is None:
            net = CNNClassifier(num_classes=5, in_channels=len(CHANNELS),
                                input_shape=frontend.output_shape(WINDOW)).net  # fmt: skip
        meta = ModelMetadata([f"class_{i}" for i in range(5)], list(CHANNELS), SAMPLE_RATE,
                             WINDOW, HOP, frontend.settings())  # fmt: skip
        paths[name] = export_onnx(DeployableModel(frontend, net).eval(), out / f"{name}.onnx", meta)
    data = QuantizationData(windows, windows[:0], np.zeros(0, np.int64))
    paths["int8_conv"] = export_int8(paths["float_conv"], out / "int8_conv.onnx", data)
    return paths


def child_main(spec_json: str) -> int:
    """``--gateway-child``: run the predictor once in this fresh process; print one JSON line."""
    spec = json.loads(spec_json)
    t0 = time.perf_counter()
    import damage_lightning.deploy.predict as deploy_predict
    from damage_lightning.deploy.session import OnnxModel

    # The high-water mark right after the file is read: what scoring adds comes after it.
    marks: dict[str, float | None] = {}
    read = deploy_predict.load_recording

    def read_and_mark(*args: Any, **kwargs: Any) -> Any:
        recording = read(*args, **kwargs)
        marks["after_read_mb"] = vm_hwm_mb()
        return recording

    deploy_predict.load_recording = read_and_mark

    import numpy as np

    model = OnnxModel.load(spec["model"])
    meta = model.metadata
    # One batch first: onnxruntime sizes its memory arena for the batch's activations then.
    model.run(np.zeros((spec["batch_size"], len(meta.channels), meta.window_length), np.float32))
    import_s = time.perf_counter() - t0
    baseline = vm_hwm_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    result = deploy_predict.predict(model, spec["csv"], batch_size=spec["batch_size"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "seconds": wall, "cpu_seconds": cpu, "windows": int(result.recordings["n_windows"].sum()),
        "baseline_mb": baseline, "after_read_mb": marks["after_read_mb"], "peak_mb": vm_hwm_mb(),
        "import_and_load_s": import_s,
        "torch_imported": "torch" in sys.modules,
    }), flush=True)  # fmt: skip
    return 0


def _run_child(model: Path, csv: Path) -> dict[str, Any]:
    spec = {"model": str(model), "csv": str(csv), "batch_size": BATCH}
    cmd = [sys.executable, str(ENTRY_POINT), "--gateway-child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"the predictor on {model.name} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_gateway(rec: Recorder, workdir: Path, seconds: float = HOUR_S) -> None:
    """Windows per second and peak memory of the predictor for each model over one hour.

    Args:
        rec: the record writer.
        workdir: where the CSV and the models are written (the CSV is reused).
        seconds: length of the recording (an hour; ``--size tiny`` shortens it).
    """
    t0 = time.perf_counter()
    csv = recording_csv(workdir, seconds)
    samples = int(seconds * SAMPLE_RATE)
    csv_mb = csv.stat().st_size / 1e6
    generate_s = time.perf_counter() - t0
    paths = build_models(csv, workdir / "gateway" / "models")
    n_windows = (samples - WINDOW) // HOP + 1
    batch_mb = BATCH * len(CHANNELS) * WINDOW * 4 / 1e6
    params = {"data": f"{seconds:g} s, 4 channels, 1 kHz", "csv": str(csv),
              "csv_mb": rounded(csv_mb, 1), "windows": n_windows,
              "waveform_mb": rounded(samples * len(CHANNELS) * 4 / 1e6, 1),
              "all_windows_mb": rounded(n_windows * len(CHANNELS) * WINDOW * 4 / 1e6, 1),
              "batch_mb": rounded(batch_mb, 2), "window": WINDOW, "hop": HOP, "batch_size": BATCH,
              **FRONTEND, "network": "default CNN (widths 32-64-128-256), untrained",
              "csv_setup_s": rounded(generate_s, 1),
              "what": "damage_lightning.deploy.predict(model, csv) in a fresh process: read, "
                      "validate, window, score a batch at a time, aggregate"}  # fmt: skip
    speed = {}
    for name in MODELS:
        run = _run_child(paths[name], csv)
        assert run["windows"] == n_windows, run
        speed[name] = run["windows"] / run["seconds"]
        extra = {"seconds": rounded(run["seconds"], 2),
                 "cpu_seconds": rounded(run["cpu_seconds"], 2),
                 "realtime_factor": rounded(seconds / run["seconds"], 1),
                 "model_mb": rounded(paths[name].stat().st_size / 1e6, 2),
                 "torch_imported": run["torch_imported"]}  # fmt: skip
        rec.emit(f"gateway_{name}_windows_per_s", rounded(speed[name], 1), "windows/s",
                 {**params, "model": name}, device="cpu", **extra)  # fmt: skip
        added = run["peak_mb"] - run["baseline_mb"]
        by_scoring = run["peak_mb"] - run["after_read_mb"]
        limit = csv_mb + batch_mb
        rec.emit(f"gateway_{name}_peak_memory", rounded(run["peak_mb"], 1), "MB",
                 {**params, "model": name}, target=f"added <= csv_mb + batch_mb = {limit:.1f} MB",
                 met=bool(added <= limit), device="cpu",
                 baseline_mb=rounded(run["baseline_mb"], 1), added_mb=rounded(added, 1),
                 after_read_mb=rounded(run["after_read_mb"], 1),
                 note="baseline: VmHWM after the imports, loading the model and scoring one "
                      "batch (onnxruntime's arena); added: what reading and scoring the "
                      "recording took on top; after_read: VmHWM once the file was "
                      "read")  # fmt: skip
        rec.emit(f"gateway_{name}_scoring_memory", rounded(by_scoring, 1), "MB",
                 {**params, "model": name},
                 target=f"< all_windows_mb = {params['all_windows_mb']} MB",
                 met=bool(by_scoring < params["all_windows_mb"]), device="cpu",
                 note="VmHWM growth after the file was read: windowing, scoring a batch at a "
                      "time and aggregating; holding every window at once would add "
                      "all_windows_mb")  # fmt: skip
    ratio = speed["int8_conv"] / speed["float_conv"]
    rec.emit("gateway_int8_speedup", rounded(ratio, 3), "ratio", params,
             target=TARGET_INT8_SPEEDUP, met=at_least(ratio, TARGET_INT8_SPEEDUP), device="cpu",
             note="int8_conv windows/s over float_conv windows/s, same predictor and "
                  "data")  # fmt: skip
