"""Test-only callbacks that hold a training run at a chosen point until a signal arrives.

A test that interrupts a run (SIGINT, SIGKILL) waits for the marker file this writes, not for a
guess at how long training takes, so the signal lands where the test means it to on an idle
machine and on a busy one alike.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from lightning.pytorch.callbacks import Callback

Hook = Literal["train_batch", "validation_batch", "save_checkpoint", "train_epoch_end"]


class PauseAt(Callback):
    """At one point of one epoch, write ``marker`` and wait there for a signal.

    It holds a run once: when ``marker`` exists (a resumed run, whose saved config still lists
    this callback) it does nothing.

    Args:
        marker: file written (JSON: epoch, hook, global step) when the run reaches the point.
        epoch: the epoch to hold in.
        hook: where in that epoch: after its first training batch (``train_batch``), after its
            first validation batch (``validation_batch``), while its checkpoint is being
            assembled (``save_checkpoint``), or at the end of its training epoch, after
            validation (``train_epoch_end``; the epoch's checkpoints are written after every
            other callback's hook, so ``last.ckpt`` is still the previous epoch's).
        timeout: seconds to wait before failing the run, so a test that dies without signalling
            leaves no process behind for long.
    """

    def __init__(
        self, marker: str, epoch: int = 1, hook: Hook = "train_epoch_end", timeout: float = 600.0
    ):
        self.marker = Path(marker)
        self.epoch = epoch
        self.hook = hook
        self.timeout = timeout

    def _maybe_pause(self, trainer, hook: str) -> None:
        if hook != self.hook or trainer.current_epoch != self.epoch or trainer.sanity_checking:
            return
        if self.marker.exists():
            return
        state = {"epoch": trainer.current_epoch, "hook": hook, "global_step": trainer.global_step}
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.marker)  # the test never reads a half-written marker
        deadline = time.monotonic() + self.timeout
        # Sleeping is interrupted by the signal: SIGINT raises KeyboardInterrupt right here.
        while time.monotonic() < deadline:
            time.sleep(0.1)
        raise RuntimeError(f"PauseAt: no signal arrived within {self.timeout} s")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._maybe_pause(trainer, "train_batch")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0:
            self._maybe_pause(trainer, "validation_batch")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._maybe_pause(trainer, "save_checkpoint")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._maybe_pause(trainer, "train_epoch_end")
