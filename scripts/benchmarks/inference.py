"""CPU inference of the exported waveform-in model: eager, TorchScript and onnxruntime.

The trained models of the training benchmark are wrapped as ``DeployableModel(frontend, net)``
and exported with ``export_onnx`` / ``export_torchscript``. Records per model and runtime: batch-1
latency (p50 as the value, and p99, in ms) and batch throughput (windows/s). Target (issue 7):
the onnxruntime p50 no worse than eager's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import CHANNELS, FRONTEND, SAMPLE_RATE, WINDOW, Recorder, Size, rounded
from .frontend import make_frontend
from .training import TrainSetup, model_params


def _latencies(fn: Callable[[Any], Any], x: Any, iters: int) -> list[float]:
    for _ in range(max(3, iters // 20)):
        fn(x)
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def bench_inference(rec: Recorder, setup: TrainSetup, models: dict[str, Any], workdir: Path,
                    size: Size) -> None:  # fmt: skip
    """Eager vs TorchScript vs onnxruntime of the exported waveform-in model on the CPU."""
    import copy

    import numpy as np
    import onnxruntime as ort
    import torch

    from damage_lightning.export import (
        DeployableModel,
        ModelMetadata,
        export_onnx,
        export_torchscript,
    )

    for kind, model in models.items():
        frontend = make_frontend()
        frontend.load_state_dict(setup.frontend_state)
        net = copy.deepcopy(model.net).cpu().float().to(memory_format=torch.contiguous_format)
        deploy = DeployableModel(frontend, net).eval()
        out = workdir / "export" / kind
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        n_classes = int(model.hparams.num_classes)
        meta = ModelMetadata([f"class_{i}" for i in range(n_classes)], list(CHANNELS),
                             SAMPLE_RATE, WINDOW, WINDOW // 2, frontend.settings())  # fmt: skip
        onnx_path = export_onnx(deploy, out / "model.onnx", meta)
        onnx_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ts_path = export_torchscript(deploy, out / "model.ts.pt", meta)
        ts_s = time.perf_counter() - t0
        scripted = torch.jit.load(str(ts_path)).eval()
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def eager(x: Any, deploy: Any = deploy) -> Any:
            with torch.inference_mode():
                return deploy(torch.from_numpy(x))

        def torchscript(x: Any, scripted: Any = scripted) -> Any:
            with torch.inference_mode():
                return scripted(torch.from_numpy(x))

        def onnxruntime(x: Any, session: Any = session, input_name: str = input_name) -> Any:
            return session.run(None, {input_name: x})

        runtimes = {"eager": eager, "torchscript": torchscript, "onnxruntime": onnxruntime}
        rng = np.random.default_rng(0)
        one = rng.standard_normal((1, len(CHANNELS), WINDOW)).astype(np.float32)
        many = rng.standard_normal((size.throughput_batch, len(CHANNELS), WINDOW))
        many = many.astype(np.float32)
        params = {"model": kind, **model_params(kind, setup.size), "channels": len(CHANNELS),
                  "window": WINDOW, **FRONTEND, "torch_threads": torch.get_num_threads(),
                  "onnxruntime": ort.__version__, "onnx_export_s": rounded(onnx_s, 2),
                  "torchscript_export_s": rounded(ts_s, 2), "latency_iters": size.latency_iters,
                  "throughput_batch": size.throughput_batch,
                  "throughput_iters": size.throughput_iters}  # fmt: skip
        p50 = {}
        for name, fn in runtimes.items():
            lat = _latencies(fn, one, size.latency_iters)
            p50[name] = _percentile(lat, 50)
            extra = {}
            if name == "onnxruntime":
                extra = {"target": "<= eager p50", "met": bool(p50[name] <= p50["eager"])}
            rec.emit(f"inference_{kind}_{name}_batch1_latency", rounded(p50[name], 3), "ms", params,
                     device="cpu", p50_ms=rounded(p50[name], 3),
                     p99_ms=rounded(_percentile(lat, 99), 3), **extra)  # fmt: skip
            fn(many)
            start = time.perf_counter()
            for _ in range(size.throughput_iters):
                fn(many)
            elapsed = time.perf_counter() - start
            speed = size.throughput_iters * size.throughput_batch / elapsed
            rec.emit(f"inference_{kind}_{name}_batch{size.throughput_batch}_throughput",
                     rounded(speed, 1), "windows/s", params, device="cpu")  # fmt: skip
