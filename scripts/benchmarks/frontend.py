"""The spectrogram front end alone: windows per second, no gradient (no target in issue 7).

2 channels x 4096 samples at 12 kHz to a 64-band log-mel (``n_fft`` 256, hop 64), timed for
the size's ``frontend_seconds`` at its ``frontend_batch``. ``make_frontend`` is also the front end
the plain training loop and the exported inference model use.
"""

from __future__ import annotations

import time
from typing import Any

from .common import CHANNELS, FRONTEND, SAMPLE_RATE, WINDOW, Recorder, Size, rounded, sync


def make_frontend(n_channels: int = len(CHANNELS)) -> Any:
    """The measured front end: 2 channels x 4096 samples at 12 kHz -> 64-band log-mel."""
    from damage_lightning.data.frontend import SpectrogramFrontend

    fe = dict(FRONTEND)
    kind = fe.pop("spectrogram")
    return SpectrogramFrontend(sample_rate=SAMPLE_RATE, n_channels=n_channels, kind=kind, **fe)


def bench_frontend(rec: Recorder, device: Any, size: Size) -> None:
    """Spectrogram windows per second of the front end alone (no gradient)."""
    import torch

    frontend = make_frontend().to(device)
    x = torch.randn(size.frontend_batch, len(CHANNELS), WINDOW, device=device)
    with torch.inference_mode():
        for _ in range(3):
            frontend(x)
        sync(device)
        n, start = 0, time.perf_counter()
        while True:
            frontend(x)
            n += 1
            if n % 4 == 0:
                sync(device)
                if time.perf_counter() - start >= size.frontend_seconds:
                    break
        sync(device)
        elapsed = time.perf_counter() - start
    params = {"batch": size.frontend_batch, "channels": len(CHANNELS), "window": WINDOW,
              "sample_rate": SAMPLE_RATE, **FRONTEND, "output_shape": list(frontend(x[:1]).shape),
              "calls": n, "threads": torch.get_num_threads()}  # fmt: skip
    rec.emit("frontend_windows_per_s", rounded(n * size.frontend_batch / elapsed, 1), "windows/s",
             params)  # fmt: skip
