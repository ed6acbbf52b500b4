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
from lightning.pytorch.plugins import TorchCheckpointIO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from damage_lightning.artifacts import TMP_PREFIX
from damage_lightning.callbacks import DirectCheckpointIO, RunCheckpoint


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


class RecordingIO(TorchCheckpointIO):
    """A user's own CheckpointIO plugin (Lightning's save path), recording what it wrote."""

    def __init__(self):
        self.saved: list[str] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.saved.append(os.path.basename(path))
        super().save_checkpoint(checkpoint, path, storage_options)


def _fit(
    tmp_path: Path, val_losses: list[float], plugins: list | None = None
) -> tuple[Path, list[tuple[bool, int, int]]]:
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
        plugins=plugins,
    )
    trainer.fit(ScriptedLoss(val_losses), DataLoader(data, batch_size=8), DataLoader(data))
    if plugins is None:  # the default plugin is back after every save
        assert type(trainer.strategy.checkpoint_io) is TorchCheckpointIO
    return folder, [*probe.seen, _files(folder)]


@pytest.mark.parametrize("plugin", ["default", "user", "user_cross_device"])
def test_last_is_every_epoch_best_the_best_and_they_share_bytes_only_when_equal(
    tmp_path, monkeypatch, plugin
):
    user_io = RecordingIO() if plugin != "default" else None
    if plugin == "user_cross_device":
        # Lightning's save (a user's plugin keeps it) writes a checkpoint in the system's
        # temporary folder and moves it into place; from another file system the move copies
        # into the old file, which would write through a link into the other checkpoint.
        def copy_into(src, dst):
            with open(src, "rb") as fin, open(dst, "r+b" if os.path.exists(dst) else "wb") as f:
                f.truncate(0)
                shutil.copyfileobj(fin, f)
            os.unlink(src)

        monkeypatch.setattr(fsspec_local.shutil, "move", copy_into)
    folder, seen = _fit(tmp_path, [1.0, 0.5, 0.7, 0.8, 0.3], [user_io] if user_io else None)
    # (one file, best's epoch, last's epoch) after epochs 0 .. 4
    assert seen == [(True, 0, 0), (True, 1, 1), (False, 1, 2), (False, 1, 3), (True, 4, 4)]
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in folder.iterdir())
    if user_io is not None:  # the user's plugin wrote every file: 3 top-k, then 2 last-only
        assert user_io.saved == [f"{TMP_PREFIX}best.ckpt.partial"] * 2 + [
            f"{TMP_PREFIX}last.ckpt.partial"
        ] * 2 + [f"{TMP_PREFIX}best.ckpt.partial"]


def test_the_default_plugin_writes_one_torch_save_into_the_partial_file(tmp_path, monkeypatch):
    written: list[str] = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        written.append(os.path.basename(f))
        assert os.path.dirname(f) == str(tmp_path / "checkpoints")  # beside the final file
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    folder, seen = _fit(tmp_path, [1.0, 0.9, 1.2])
    assert written == [f"{TMP_PREFIX}best.ckpt.partial"] * 2 + [f"{TMP_PREFIX}last.ckpt.partial"]
    assert seen[-1] == (False, 1, 2)
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and "optimizer_states" in state and "state_dict" in state


def test_direct_io_makes_the_folder_and_refuses_storage_options(tmp_path):
    path = tmp_path / "new" / "folder" / "x.ckpt"
    DirectCheckpointIO().save_checkpoint({"a": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    with pytest.raises(TypeError, match="storage_options"):
        DirectCheckpointIO().save_checkpoint({}, tmp_path / "y.ckpt", storage_options={"x": 1})


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
            checkpoint_io = None

            @staticmethod
            def barrier(name=None):
                pass

        @staticmethod
        def save_checkpoint(path, weights_only=False):
            Path(path).write_bytes(b"new state")

    checkpoint._save_checkpoint(Stub, str(folder / "last.ckpt"))
    assert best.read_bytes() == before
    assert (folder / "last.ckpt").read_bytes() == b"new state"
