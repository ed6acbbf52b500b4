"""What keeping freed memory in the heap (``damage_lightning.heap``) gains a CPU training step.

Our ``fit`` on the CPU raises glibc's mmap and trim thresholds so that a step's activations
reuse the memory the previous step freed instead of faulting fresh zeroed pages in (the default
CNN's first activations are 34 MB per tensor at batch 64). This times training steps of the
default CNN and ResNet (the benchmark's sizes, batch ``size.batch_size``, channels_last, fp32,
AdamW), each step the measured front end (2 x 4096 samples -> 64-band log-mel, 2 x 64 x 65) and
the network's forward, backward and optimiser step on a fixed batch, with the setting and without
it, interleaved in one process (system, kept, system, kept, ...; "system" is glibc with the
thresholds its adaptive rule ends at, 32 and 64 MiB). Record ``train_step_heap_speedup_<model>``:
the median over the rounds of the system step time over the kept one (wall clock), with the CPU
time ratio and the page faults per step of both. No target: the training ratio against the
plain loop gives the plain loop the same setting, so this is the one place its gain shows.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from .common import CHANNELS, WINDOW, Recorder, Size, rounded
from .frontend import make_frontend
from .training import model_params

INPUT_SHAPE = (len(CHANNELS), 64, 65)


def bench_heap(
    rec: Recorder, size: Size, kinds: list[str], rounds: int = 5, steps: int = 4
) -> None:
    """Interleaved rounds of ``steps`` training steps without and with the heap kept."""
    from damage_lightning import heap

    for kind in kinds:
        if heap._glibc() is None:
            rec.skipped(f"train_step_heap_speedup_{kind}", "needs Linux with glibc")
            continue
        times = _rounds(_training_step(kind, size), rounds, steps)
        pairs = list(zip(times["system"], times["kept"], strict=True))
        params: dict[str, Any] = {
            "model": kind,
            **model_params(kind, size),
            "batch_size": size.batch_size,
            "input_shape": list(INPUT_SHAPE),
            "channels_last": True,
            "precision": "32-true",
            "rounds": rounds,
            "steps_per_round": steps,
            "order": "system, kept, system, kept, ...",
        }
        ms = {m: rounded(1e3 * statistics.median(t[0] for t in v), 1) for m, v in times.items()}
        faults = {m: int(statistics.median(t[2] for t in v)) for m, v in times.items()}
        wall_ratio = [s[0] / k[0] for s, k in pairs]
        rec.emit(
            f"train_step_heap_speedup_{kind}",
            rounded(statistics.median(wall_ratio)),
            "ratio",
            params,
            rounds_wall=[rounded(r) for r in wall_ratio],
            cpu_ratio=rounded(statistics.median(s[1] / k[1] for s, k in pairs)),
            step_ms=ms,
            page_faults_per_step=faults,
            note="value: median over the rounds of the step time without / with the heap kept",
        )


def _training_step(kind: str, size: Size) -> Callable[[], None]:
    """One AdamW training step of the default ``kind`` network on a fixed random batch."""
    import torch
    import torch.nn.functional as F

    from damage_lightning.models import CNNClassifier, ResNetClassifier

    torch.manual_seed(0)
    cls = CNNClassifier if kind == "cnn" else ResNetClassifier
    model = cls(num_classes=4, in_channels=len(CHANNELS), input_shape=INPUT_SHAPE,
                channels_last=True, **model_params(kind, size))  # fmt: skip
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=0.002, weight_decay=1e-4)
    frontend = make_frontend()
    waves = torch.randn(size.batch_size, len(CHANNELS), WINDOW)
    y = torch.randint(0, 4, (size.batch_size,))

    def step() -> None:
        with torch.no_grad():  # as the DataModule computes it, after the batch transfer
            x = frontend(waves).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    return step


def _rounds(step: Callable[[], None], rounds: int, steps: int) -> dict[str, list[tuple]]:
    """``(wall s, CPU s, page faults)`` per step of each round, without ("system") and with."""
    from damage_lightning import heap

    times: dict[str, list[tuple]] = {"system": [], "kept": []}
    for _ in range(rounds):
        for mode in ("system", "kept"):
            kept = mode == "kept" and heap.keep_freed_memory()
            try:
                step()  # the first step in a mode settles the heap
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    step()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            finally:
                if kept:
                    heap.release_freed_memory()
            times[mode].append((wall / steps, cpu / steps, faults / steps))
    return times
