"""The recordings ``predict`` (and ``--adapt``) reads: every window of every file, with speeds.

:func:`load_predict_recordings` reads them as the gateway's predictor does;
:class:`PredictDataMixin` is the DataModule's side of it (loaders, recording names, findings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from damage_lightning.card import SensorFinding
from damage_lightning.data.windows import WindowBatchLoader
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.dataset import load_recording
from damage_lightning.io.discovery import find_recordings
from damage_lightning.io.readers.base import ReaderOptions
from damage_lightning.io.speed import recording_speeds
from damage_lightning.io.windows import window_starts


@dataclass
class PredictRecordings:
    """Recordings to predict, read and cut.

    Args:
        waveforms: one ``(channels, samples)`` array per recording.
        index: ``(recording, start)`` rows of every window.
        labels: each recording's class index (``-1`` where the data name none of the classes).
        paths: each recording's path as shown to users.
        speeds: each recording's shaft speed in rpm (order spectra), else ``None``.
    """

    waveforms: list[np.ndarray]
    index: np.ndarray
    labels: np.ndarray
    paths: list[str]
    speeds: np.ndarray | None = None


def load_predict_recordings(
    path: str | Path,
    channels: list[str],
    sample_rate: float,
    options: ReaderOptions,
    window: int,
    hop: int,
    class_names: list[str],
    speed: tuple[str, float | None] | None = None,
) -> PredictRecordings:
    """Read every recording at ``path`` as the gateway's predictor does, and index its windows.

    The same discovery, reading, validation, resampling and windowing as the torch-free predictor
    (``damage_lightning.deploy``), so both see identical windows.

    Args:
        path: a folder of recordings (sub-folders, a manifest) or one recording file.
        channels: the model's channels, in order.
        sample_rate: the model's rate (recordings at another known rate are resampled).
        options: format options of the readers.
        window: window length.
        hop: step between windows (starts ``0, hop, 2 hop, ...``).
        class_names: the model's classes.
        speed: ``(manifest column, default rpm)`` when the model takes the shaft speed.

    Raises:
        DataValidationError: every bad recording (or missing speed), named.
    """
    problems: list[Problem] = []
    specs, waveforms, labels = [], [], []
    for spec in find_recordings(path):
        try:
            rec = load_recording(spec, channels, sample_rate, options, window)
        except DataValidationError as exc:
            problems.extend(exc.problems)
            continue
        specs.append(spec)
        waveforms.append(rec.data)
        labels.append(class_names.index(spec.label) if spec.label in class_names else -1)
    speeds = None
    if speed is not None:
        try:
            speeds = recording_speeds(specs, speed[0], speed[1], "data.predict_rpm")
        except DataValidationError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataValidationError(problems)
    parts = []
    for i, w in enumerate(waveforms):
        starts = window_starts(0, w.shape[1], window, hop)
        parts.append(np.stack([np.full(len(starts), i, dtype=np.int64), starts], axis=1))
    index = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    paths = [s.relpath for s in specs]
    return PredictRecordings(waveforms, index, np.array(labels, dtype=np.int64), paths, speeds)


class PredictDataMixin:
    """The predict side of :class:`~damage_lightning.data.datamodule.DamageDataModule`.

    Reads ``predict_data_dir`` (or any folder, for ``--adapt``) once, lazily, into
    ``self._predict``, and serves its windows, recording names and sensor-health findings; with
    no ``predict_data_dir`` the test split stands in. It uses the DataModule's settings
    (``hparams``, ``window``, ``hop``, ``batch_size``, ``channels``, ``sample_rate``,
    ``reader_options``, ``class_names``), its loaded data (``dataset``, ``indices``,
    ``_labels``, ``_findings``, ``_device``, ``_speeds``) and ``health_reference``.
    """

    def predict_dataloader(self) -> WindowBatchLoader:
        """Windows to predict, with their recording and start sample.

        Every window of every recording in ``predict_data_dir`` (starts ``0, hop, 2 hop, ...``),
        or the test split's windows when no ``predict_data_dir`` is set.
        """
        if self.dataset is None:
            self.setup("predict")
        if self.hparams.predict_data_dir:
            if self._predict is None:
                self._predict = self._load_predict_recordings()
            data = self._predict
        else:
            assert self.dataset is not None
            data = PredictRecordings(
                self.dataset.waveforms, self.indices["test"], self._labels, [],
                self._speeds(self.dataset.recordings),
            )  # fmt: skip
        return self._windows_of(data)

    def _windows_of(self, data: PredictRecordings) -> WindowBatchLoader:
        return WindowBatchLoader(
            data.waveforms,
            data.index,
            data.labels,
            self.window,
            batch_size=self.batch_size,
            device=self._device,
            with_positions=True,
            speeds=data.speeds,
        )

    def predict_recordings(self) -> list[tuple[str, str | None]]:
        """``(path, label or None)``, indexed by the predict batches' ``recording``."""
        if self.hparams.predict_data_dir:
            if self._predict is None:
                self._predict = self._load_predict_recordings()
            pairs = zip(self._predict.paths, self._predict.labels, strict=True)
            return [(p, self.class_names[i] if i >= 0 else None) for p, i in pairs]
        assert self.dataset is not None
        return [(r.relpath, r.label) for r in self.dataset.recordings]

    def recording_windows(self, path: str | Path) -> WindowBatchLoader:
        """Every window of the recordings at ``path``, read and cut exactly as predict data are.

        What test-time BatchNorm adaptation (``--adapt``) runs on; batches are
        ``(waveform, label, recording, start)`` with label ``-1`` where the data name none.

        Args:
            path: a folder of recordings (sub-folders, a manifest) or one recording file.

        Raises:
            DataValidationError: a recording cannot be read, or has other channels.
        """
        # On the accelerator when setup() put the data there; the training data need not be read.
        return self._windows_of(self._load_predict_recordings(path))

    def _load_predict_recordings(self, path: str | Path | None = None) -> PredictRecordings:
        hp = self.hparams
        return load_predict_recordings(
            path if path is not None else hp.predict_data_dir, self.channels, self.sample_rate,
            self.reader_options, self.window, self.hop, self.class_names,
            (hp.rpm_column, hp.predict_rpm) if hp.order else None,
        )  # fmt: skip

    def predict_findings(self) -> list[list[SensorFinding]]:
        """The sensor-health findings of each recording of :meth:`predict_recordings`, by index.

        Empty lists with ``health: off``. The recordings of ``predict_data_dir`` are checked
        against :attr:`health_reference` (the checkpoint's when one was loaded).
        """
        if self.hparams.health == "off":
            return [[] for _ in self.predict_recordings()]
        if not self.hparams.predict_data_dir:
            return self._findings
        if self._predict_findings is None:
            if self._predict is None:
                self._predict = self._load_predict_recordings()
            from damage_lightning.evaluation.health import check_recording

            waveforms, paths = self._predict.waveforms, self._predict.paths
            self._predict_findings = [
                check_recording(w, self.channels, p, self.sample_rate, self.health_reference)
                for w, p in zip(waveforms, paths, strict=True)
            ]
        return self._predict_findings
