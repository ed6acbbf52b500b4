"""What each generalisation option of issue 10 costs in training time, against the plain STFT.

A training step is what the options change: the augmentations of the batch, the front end, and
the network's forward, backward and optimiser step on whatever shape the front end gives. Data
loading is the same for every option and is left out, so each ratio is an upper bound of what
the option adds to a whole ``fit``. The input is the benchmark's measured one (2 channels x 4096
samples at 12 kHz, batches of 64, the default CNN); the plain front end is a linear STFT
(``n_fft`` 256, hop 64, up to 6 kHz). Each option is on its own on top of it, except
``augment_all`` and ``envelope_order``; the order options are timed at a constant 1800 rpm.
Rounds interleave the options (plain, a, b, ..., plain, a, b, ...) so that a noisy machine
slows them all alike; the figure is the median over the rounds of the option's step time over
the plain one of the same round. Target: at most 1.20 (20 % more).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .common import CHANNELS, SAMPLE_RATE, WINDOW, Recorder, rounded

TARGET = 1.20
PLAIN = {
    "spectrogram": "stft",
    "n_fft": 256,
    "hop_length": 64,
    "f_max": 6000.0,
}
#: The options measured, as ``DamageDataModule`` arguments on top of :data:`PLAIN`.
#: Each has the target, except where the option changes the network's input size (the cost is
#: then the network's, set by the user's ``n_orders``): :data:`NO_TARGET`.
OPTIONS: dict[str, dict[str, Any]] = {
    "envelope": {"spectrogram": "envelope", "f_max": None},
    "instance_norm": {"instance_norm": True},
    "whiten": {"whiten": 7},
    "average_frames": {"average_frames": True},
    # Order spectra with as many rows as the spectrum they resample (at 1800 rpm, 30 Hz: the
    # 129 STFT bins up to 6 kHz are 200 orders; each envelope band's 22 bins up to 1 kHz, 33).
    "order": {"order": True, "orders_max": 200.0, "n_orders": 129},
    "envelope_order": {
        "spectrogram": "envelope",
        "f_max": None,
        "order": True,
        "orders_max": 33.0,
        "n_orders": 22,
    },
    # The defaults (orders_max 50, n_orders 256): twice the STFT's rows, so twice the network.
    "order_default_rows": {"order": True},
    "augment_gain": {"augment_gain_db": (-6.0, 6.0)},
    "augment_snr": {"augment_snr_db": (10.0, 30.0)},
    "augment_shift": {"augment_shift": 0.5},
    "augment_speed": {"augment_speed": 0.03},
    "augment_all": {
        "augment_gain_db": (-6.0, 6.0),
        "augment_snr_db": (10.0, 30.0),
        "augment_shift": 0.5,
        "augment_speed": 0.03,
    },
}


NO_TARGET = ("order_default_rows",)


class _Step:
    """One option's training step on a fixed batch: augment, front end, CNN step."""

    def __init__(self, options: dict[str, Any], batch: int, seed: int = 0) -> None:
        import torch

        from damage_lightning.data.augment import AugmentSettings
        from damage_lightning.data.frontend import SpectrogramFrontend
        from damage_lightning.models import CNNClassifier

        settings = {**PLAIN, **options}
        self.augment = AugmentSettings(
            gain_db=settings.pop("augment_gain_db", None),
            snr_db=settings.pop("augment_snr_db", None),
            shift=settings.pop("augment_shift", 0.0),
            speed=settings.pop("augment_speed", 0.0),
        )
        kind = settings.pop("spectrogram")
        self.order = bool(settings.get("order", False))
        self.frontend = SpectrogramFrontend(SAMPLE_RATE, len(CHANNELS), kind=kind, **settings)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, len(CHANNELS), WINDOW, generator=g)
        self.y = torch.randint(0, 4, (batch,), generator=g)
        self.rpm = torch.full((batch,), 1800.0)
        shape = self.frontend.output_shape(WINDOW)
        self.model = CNNClassifier(num_classes=4, in_channels=len(CHANNELS), input_shape=shape)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.shape = list(shape)
        self.calls = 0

    def __call__(self) -> None:
        import torch.nn.functional as F

        from damage_lightning.data.augment import augment

        waveform, rpm = self.x, self.rpm
        if self.augment.enabled:
            out = augment(waveform, self.augment, self.calls)
            waveform, rpm = out.waveform, rpm * out.speed
        self.calls += 1
        spec = self.frontend(waveform, rpm if self.order else None)
        loss = F.cross_entropy(self.model(spec), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def bench_options(rec: Recorder, rounds: int = 5, steps: int = 6, batch: int = 64) -> None:
    """Record each option's step time over the plain STFT's (median of interleaved rounds).

    Args:
        rec: the benchmark's recorder.
        rounds: interleaved rounds (the spread is reported with the median).
        steps: timed training steps per option and round (after one warm-up step).
        batch: windows per step.
    """
    import torch

    names = ["plain", *OPTIONS]
    runs = {name: _Step(PLAIN if name == "plain" else OPTIONS[name], batch) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for run in runs.values():
        run()  # warm-up: allocations, first-call costs
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            for _ in range(steps):
                runs[name]()
            times[name].append((time.perf_counter() - start) / steps)
    plain = times["plain"]
    params = {**PLAIN, "batch": batch, "window": WINDOW, "channels": len(CHANNELS)}
    params |= {"input_shape": runs["plain"].shape, "threads": torch.get_num_threads()}
    rec.emit("option_step_plain_ms", rounded(1000 * statistics.median(plain), 2), "ms/step", params)
    for name in OPTIONS:
        ratios = [t / p for t, p in zip(times[name], plain, strict=True)]
        ratio = statistics.median(ratios)
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in OPTIONS[name].items()}
        params = {"options": options, "step_ms": rounded(1000 * statistics.median(times[name]), 2)}
        params |= {"ratio_min": rounded(min(ratios), 3), "ratio_max": rounded(max(ratios), 3)}
        params |= {"rounds": rounds, "steps": steps, "input_shape": runs[name].shape}
        rec.emit(
            f"option_cost_{name}",
            rounded(ratio, 3),
            "x plain step",
            params,
            target=None if name in NO_TARGET else TARGET,
            met=None if name in NO_TARGET else ratio <= TARGET,
        )
