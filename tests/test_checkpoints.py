"""RunCheckpoint: ``last.ckpt`` ends every epoch, ``best.ckpt`` the best one, and the two files
share their bytes (a hard link) only while they hold the same state."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fsspec.implementations.local as fsspec_local
import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from damage_lightning.artifacts import TMP_PREFIX
from damage_lightning.callbacks import RunCheckpoint


class ScriptedLoss(pl.LightningModule):
    """A linear model whose validation loss follows ``val_losses``, one value per epoch."""

    def __init__(self, val_losses: list[float]):
        super().__init__()
        self.val_losses = val_losses
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.val_losses[self.current_epoch], on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01)


class FilesAtEpochStart(pl.Callback):
    """What the checkpoint folder holds when each epoch after the first starts."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.seen: list[tuple[bool, int, int]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.seen.append(_files(self.folder))


def _files(folder: Path) -> tuple[bool, int, int]:
    """(best and last are one file, best's epoch, last's epoch)."""
    best, last = folder / "best.ckpt", folder / "last.ckpt"

    def epoch(p: Path) -> int:
        return torch.load(p, map_location="cpu", weights_only=True)["epoch"]

    return os.path.samefile(best, last), epoch(best), epoch(last)


def _fit(tmp_path: Path, val_losses: list[float]) -> tuple[Path, list[tuple[bool, int, int]]]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    folder = tmp_path / "checkpoints"
    probe = FilesAtEpochStart(folder)
    checkpoint = RunCheckpoint(
        dirpath=folder,
        monitor="val_loss",
        mode="min",
        filename="best",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    trainer = pl.Trainer(
        max_epochs=len(val_losses),
        callbacks=[checkpoint, probe],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(ScriptedLoss(val_losses), DataLoader(data, batch_size=8), DataLoader(data))
    return folder, [*probe.seen, _files(folder)]


@pytest.mark.parametrize("cross_device", [False, True])
def test_last_is_every_epoch_best_the_best_and_they_share_bytes_only_when_equal(
    tmp_path, monkeypatch, cross_device
):
    if cross_device:
        # fsspec writes a checkpoint in the system's temporary folder and moves it into place;
        # from another file system the move copies into the old file, which would write through
        # a link into the other checkpoint.
        def copy_into(src, dst):
            with open(src, "rb") as fin, open(dst, "r+b" if os.path.exists(dst) else "wb") as f:
                f.truncate(0)
                shutil.copyfileobj(fin, f)
            os.unlink(src)

        monkeypatch.setattr(fsspec_local.shutil, "move", copy_into)
    folder, seen = _fit(tmp_path, [1.0, 0.5, 0.7, 0.8, 0.3])
    # (one file, best's epoch, last's epoch) after epochs 0 .. 4
    assert seen == [(True, 0, 0), (True, 1, 1), (False, 1, 2), (False, 1, 3), (True, 4, 4)]
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in folder.iterdir())


def test_a_leftover_partial_link_is_not_written_through(tmp_path):
    # A run killed between linking last.ckpt's temporary name and renaming it leaves a link to
    # best.ckpt under that name; the next save replaces it instead of writing into it.
    folder, _ = _fit(tmp_path / "a", [1.0, 0.5])
    best = folder / "best.ckpt"
    before = best.read_bytes()
    os.link(best, folder / f"{TMP_PREFIX}last.ckpt.partial")
    os.link(best, folder / f"{TMP_PREFIX}best.ckpt.partial")
    checkpoint = RunCheckpoint(dirpath=folder, filename="best", save_last=True)

    class Stub:
        is_global_zero = True
        global_step = 7
        loggers = ()

        class strategy:
            @staticmethod
            def barrier(name=None):
                pass

        @staticmethod
        def save_checkpoint(path, weights_only=False):
            Path(path).write_bytes(b"new state")

    checkpoint._save_checkpoint(Stub, str(folder / "last.ckpt"))
    assert best.read_bytes() == before
    assert (folder / "last.ckpt").read_bytes() == b"new state"
