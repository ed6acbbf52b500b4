"""Freed memory stays in the heap during a CPU ``fit`` and goes back to the system after it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from damage_lightning import heap
from damage_lightning.callbacks import ReuseFreedMemory
from damage_lightning.models import CNNClassifier


class FakeLibc:
    """Records mallopt and malloc_trim calls; ``refuse`` makes mallopt fail."""

    def __init__(self, refuse: bool = False):
        self.calls: list[tuple] = []
        self.refuse = refuse

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 0 if self.refuse else 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


KEEP = [("mallopt", -3, 1 << 30), ("mallopt", -1, 1 << 30)]
AFTER = [("mallopt", -3, 32 << 20), ("mallopt", -1, 64 << 20)]


def test_keep_and_release_nest_and_restore_the_thresholds(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    assert heap.keep_freed_memory() and heap.keep_freed_memory()
    assert libc.calls == KEEP  # only the outer call changes the settings
    heap.release_freed_memory()
    assert libc.calls == KEEP
    heap.release_freed_memory()
    assert libc.calls == [*KEEP, *AFTER, ("malloc_trim", 0)]
    heap.release_freed_memory()  # one release too many changes nothing
    assert libc.calls == [*KEEP, *AFTER, ("malloc_trim", 0)]


def test_a_refused_setting_reports_false_and_leaves_nothing_to_release(monkeypatch):
    libc = FakeLibc(refuse=True)
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    assert heap.keep_freed_memory() is False
    heap.release_freed_memory()
    assert ("malloc_trim", 0) not in libc.calls


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(heap.ENV_VAR, "system")
    assert heap._glibc() is None and heap.keep_freed_memory() is False


@pytest.mark.skipif(heap._glibc() is None, reason="needs Linux with glibc")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_back():
    # The default CNN's first layer at batch 64: 34 MB activations, above every mmap threshold
    # glibc adapts to. By default each step gets them as fresh zeroed pages (one fault per
    # 4 KiB page, ~24 000 per step of the real CNN); kept in the heap, most are reused.
    code = textwrap.dedent(
        """
        import resource, sys, torch
        from torch import nn
        from damage_lightning import heap
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(2, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(3))
        x, y = torch.randn(64, 2, 64, 65), torch.randint(0, 3, (64,))
        def step():
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
        step()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        if sys.argv[1] == "keep":
            assert heap.keep_freed_memory()
        for _ in range(2):
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            opt.zero_grad()
            step()
            opt.step()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != heap.ENV_VAR}
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr
        faults[mode] = int(out.stdout.split()[-1])
    assert faults["default"] > 10_000, faults  # several 34 MB tensors of fresh pages per step
    assert faults["keep"] < faults["default"] / 3, faults


class Tiny(pl.LightningModule):
    def __init__(self, fail_at_epoch: int | None = None):
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.fail_at_epoch = fail_at_epoch

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.fail_at_epoch:
            raise RuntimeError("boom")
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(pl.Callback):
    """Notes whether the heap settings are in effect while training."""

    def __init__(self, seen: list):
        self.seen = seen

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen.append(("epoch", list(calls)))


calls: list[str] = []


@pytest.mark.parametrize("fail", [False, True])
def test_the_callback_keeps_memory_during_fit_only(monkeypatch, fail):
    calls.clear()
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(heap, "release_freed_memory", lambda: calls.append("release"))
    seen: list = []
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ReuseFreedMemory(), Probe(seen)],
    )
    model = Tiny(fail_at_epoch=1 if fail else None)
    if fail:
        with pytest.raises(RuntimeError, match="boom"):
            trainer.fit(model, data)
    else:
        trainer.fit(model, data)
    assert seen[0] == ("epoch", ["keep"])
    assert calls == ["keep", "release"]
    trainer.validate(model, data)  # not a fit: nothing changes
    assert calls == ["keep", "release"]


def test_every_task_brings_the_callback():
    model = CNNClassifier(num_classes=3, in_channels=2, input_shape=(2, 33, 17), widths=[4, 8])
    assert [type(c) for c in model.configure_callbacks()] == [ReuseFreedMemory]
