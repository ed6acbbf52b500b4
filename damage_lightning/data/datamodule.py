"""DamageDataModule: recordings on disk to spectrogram batches (CLI, runner and notebooks)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import Tensor

from damage_lightning.card import SensorFinding, SensorHealthCard, SensorReference
from damage_lightning.data.augment import AugmentedBatch, AugmentSettings, augment, batch_seed
from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.data.health_gate import (
    HealthAction,
    apply_gate,
    flag_split_windows,
    rethrow_with_exclusions,
)
from damage_lightning.data.novelty_split import plan_novelty_splits
from damage_lightning.data.order import check_order_options, split_speed
from damage_lightning.data.predict_data import PredictDataMixin, PredictRecordings
from damage_lightning.data.prefetch import PrefetchingWindowLoader
from damage_lightning.data.splits import SplitPlan, plan_splits
from damage_lightning.data.windows import WindowBatchLoader, build_window_index
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.cache import default_cache_dir
from damage_lightning.io.dataset import LoadedDataset, load_dataset, read_channel_names
from damage_lightning.io.discovery import RecordingSpec, discover_with_warnings
from damage_lightning.io.readers.base import ReaderOptions
from damage_lightning.io.speed import recording_speeds

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Normalisation statistics are exact over the training windows up to this many windows; beyond
# it a seeded subset is used (the statistics of a few ten thousand windows are already stable).
MAX_NORM_WINDOWS = 50_000
# Device-resident data may take at most this share of the free accelerator memory.
DEVICE_MEMORY_SHARE = 0.25


class DamageDataModule(PredictDataMixin, pl.LightningDataModule):
    """Labelled vibration recordings (CSV, .mat, .tdms, .wav, Parquet) as windows and spectrograms.

    With no ``data_dir`` the built-in simulated shear-frame dataset is generated once into the
    cache folder and used. ``num_classes``, ``class_names``, ``in_channels`` and ``input_shape``
    are available right after construction (read lazily from the files), so the CLI can link them
    into the model before ``setup()``. Batches are ``(waveform, label)`` (``order``: the rpm
    last, which the front end consumes); the spectrogram front end runs on the accelerator in
    ``on_after_batch_transfer``; ``spectrogram(waveform)`` gives the same ones in a notebook.

    Args:
        data_dir: folder of recordings: ``<label>/<recording>.<ext>`` or a ``manifest.csv``
            (columns ``path,label`` and optionally ``group``, ``split``, ``sample_rate``).
            ``None`` uses the built-in simulated dataset.
        manifest: manifest file (relative to ``data_dir`` or absolute) when not ``manifest.csv``.
        channels: sensor columns to use, in this order; ``None`` takes all numeric columns.
        sample_rate: sampling rate in Hz; ``None`` reads it from a ``time`` column or the manifest.
            Recordings at another known rate are resampled to it.
        window: window length in samples.
        hop: step between windows in samples (``None``: half a window). Windows overlap only
            within a split; they are cut after the split.
        val_fraction: share of recordings (or blocks) for validation.
        test_fraction: share of recordings (or blocks) for the test.
        split_strategy: ``auto`` uses the manifest's ``split`` column when present, else
            ``group`` when groups are given, else ``recording``, and ``block`` (contiguous blocks
            of each recording with a one-window gap) when a class has too few recordings.
        seed: seed of the split and of the shuffling.
        spectrogram: ``mel`` (mel bands), ``stft`` (linear frequency bins) or ``envelope`` (the
            spectrum of band envelopes, for bearings: see ``envelope_bands``). The front-end
            defaults are those of ``configs/cnn.yaml`` (a 2 Hz STFT up to 300 Hz, made for the
            built-in frame), so a bare ``DamageDataModule()`` gives what the default model
            trains on; for data of your own choose ``f_max`` (``None``: Nyquist) or ``mel``.
        n_fft: FFT size of the spectrogram.
        hop_length: hop of the spectrogram frames (``None``: ``n_fft // 4``).
        n_mels: number of mel bands (``spectrogram: mel``).
        f_min: lowest frequency kept, Hz.
        f_max: highest frequency kept, Hz (``None``: Nyquist).
        power: 2 for a power spectrogram, 1 for magnitude.
        top_db: dynamic range kept below each example's peak, dB (``None``: no limit).
        stft_impl: how the front end computes the STFT: ``torch`` (``torch.stft`` in float64) or
            ``conv`` (a float32 convolution with a fixed DFT basis, the same spectrum to about
            1e-4 after normalisation), whose ONNX export also runs in OpenVINO and on runtimes
            without an STFT operator, and is the cleaner base of an int8 model.
        center: centre the spectrogram frames with reflect padding; ``False`` keeps only frames
            inside the window.
        average_frames: average the power over the frames before the logarithm (a Welch power
            spectral density, one frame per window), as the novelty detector uses.
        envelope_bands: ``spectrogram: envelope``: demodulation bands ``[[low, high], ...]`` in
            Hz; each band's envelope spectrum is stacked along frequency (``None``: three octave
            bands below 0.9 times the Nyquist frequency).
        envelope_f_max: ``spectrogram: envelope``: highest envelope frequency kept, Hz
            (``None``: 1 kHz, or Nyquist if lower; 1 kHz holds the first harmonics of bearing
            defect frequencies up to 3600 rpm).
        instance_norm: standardise each window's log spectrum per channel over its own
            frequencies and frames, after the training-split statistics (which it makes
            redundant): removes a sensor's gain or a fault-size amplitude.
        whiten: subtract from each log spectrum (each band's, for ``envelope``) its moving
            average over this many frequency rows (odd; ``0``: off), leaving the lines above the
            background.
        batch_size: windows per batch (per device).
        num_workers: ``0`` gathers each training, validation and test batch when the step asks
            for it; ``N > 0`` gathers up to ``2 N`` batches ahead in one background thread, which
            hides disk reads of memory-mapped caches behind the training step (same batches,
            same order). No worker processes: a batch is one numpy gather, not per-window
            Python work. Without effect when the data live on the accelerator
            (``device_data``).
        cache_dir: folder of the waveform cache and the built-in dataset (``None``:
            ``$DAMAGE_LIGHTNING_CACHE`` or ``~/.cache/damage_lightning``).
        class_weights: offer inverse-frequency class weights of the training windows to the
            model (:meth:`class_weight_tensor`); off, it returns ``None``.
        device_data: keep the waveforms on the accelerator and cut batches there: ``auto``
            does so on a GPU when the data take under a quarter of its free memory.
        predict_data_dir: recordings to predict (a folder or one CSV); ``None`` predicts the
            test split. Labels are taken from sub-folder names or a manifest when present.
        synthetic_seed: seed of the built-in dataset (``data_dir: null``).
        variables: MATLAB ``.mat`` recordings: glob patterns of the variables to read, one channel
            each, named by the pattern without its wildcards (``["*_DE_time"]`` reads
            ``X097_DE_time`` of one file and ``X105_DE_time`` of the next as channel
            ``DE_time``). ``None`` takes a file's single numeric array.
        tdms_group: NI ``.tdms`` recordings: the group to read (``None``: the only group with
            data).
        healthy_label: train a novelty detector: only recordings of this label (the healthy
            ones) are split into train, validation (calibration) and test; recordings of every
            other label go to the test whole, and ``class_names`` lists the healthy label first.
            A dataset of one class is such data whatever its label. ``None`` with several
            classes: classification.
        synthetic_scenario: the built-in dataset used when ``data_dir`` is ``None``:
            ``classes`` (five classes for a classifier) or ``monitoring`` (many healthy
            recordings plus small damage, for ``configs/novelty.yaml``).
        health: the sensor-health gate (clipping, flat lines, dropouts, spikes, DC offset, drift,
            RMS far outside the data's range; ``damage_lightning.evaluation.health``), run on
            the loaded recordings before the split: ``warn`` prints each finding and keeps
            everything, ``exclude_recording`` leaves out recordings with a finding,
            ``exclude_windows`` leaves out the windows that overlap one, ``off`` checks nothing.
            The findings go into model_info.json and the report; ``predict`` flags windows that
            overlap a finding unless ``off``.
        augment_gain_db: training batches only: a random gain in dB drawn per window from
            ``[low, high]`` (``damage_lightning.data.augment``). ``None``: off.
        augment_snr_db: training batches only: white noise added at an SNR in dB drawn per window
            from ``[low, high]``. ``None``: off.
        augment_shift: training batches only: a random circular time shift of each window, at
            most this share of the window (``0.5`` reaches every offset). ``0``: off.
        augment_speed: training batches only: each window resampled to a speed factor drawn from
            ``[1 - augment_speed, 1 + augment_speed]`` (every frequency times that factor).
            ``0``: off. The augmentations run on the accelerator, are drawn from ``seed``, the
            epoch and the batch index (the same seed gives the same batches), and are never
            applied to validation, test or predict batches, nor exported.
        order: speed-normalised spectra: the rows (``stft`` or ``envelope``) are resampled to
            shaft orders ``linspace(0, orders_max, n_orders)`` with each recording's speed
            (``damage_lightning.data.order``); the exported model takes the rpm as a second input.
            Speed jitter (``augment_speed``) scales each window's rpm with its speed factor.
        orders_max: with ``order``, the highest shaft order.
        n_orders: with ``order``, orders per spectrum (per band for ``envelope``).
        rpm_column: the manifest column of each recording's speed in rpm (with ``order`` every
            training recording needs one).
        predict_rpm: the speed of predicted recordings whose manifest row gives none (or that
            come without a manifest), rpm.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        manifest: str | None = None,
        channels: list[str] | None = None,
        sample_rate: float | None = None,
        window: int = 1024,
        hop: int | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_strategy: Literal["auto", "explicit", "group", "recording", "block"] = "auto",
        seed: int = 42,
        spectrogram: Literal["mel", "stft", "envelope"] = "stft",
        n_fft: int = 512,
        hop_length: int | None = 64,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = 300.0,
        power: float = 2.0,
        top_db: float | None = 80.0,
        stft_impl: Literal["torch", "conv"] = "torch",
        center: bool = True,
        average_frames: bool = False,
        envelope_bands: list[list[float]] | None = None,
        envelope_f_max: float | None = None,
        instance_norm: bool = False,
        whiten: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        class_weights: bool = False,
        device_data: Literal["auto", "on", "off"] = "auto",
        predict_data_dir: str | None = None,
        synthetic_seed: int = 0,
        variables: list[str] | None = None,
        tdms_group: str | None = None,
        healthy_label: str | None = None,
        synthetic_scenario: Literal["classes", "monitoring"] = "classes",
        health: HealthAction = "warn",
        augment_gain_db: tuple[float, float] | None = None,
        augment_snr_db: tuple[float, float] | None = None,
        augment_shift: float = 0.0,
        augment_speed: float = 0.0,
        order: bool = False,
        orders_max: float = 50.0,
        n_orders: int = 256,
        rpm_column: str = "rpm",
        predict_rpm: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_order_options(order, orders_max, n_orders, rpm_column, predict_rpm, spectrogram)
        if window < 2:
            raise ValueError(f"data.window must be at least 2 samples, got {window}")
        self.hop = int(hop) if hop else max(1, window // 2)
        if self.hop < 1:
            raise ValueError(f"data.hop must be positive, got {hop}")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
            raise ValueError("data.val_fraction and data.test_fraction must lie in [0, 1)")
        if val_fraction + test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must leave data for training")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be 0 or more, got {num_workers}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        self.window = int(window)
        #: What the training batches go through before the front end (all off by default).
        self.augment = AugmentSettings(
            tuple(augment_gain_db) if augment_gain_db is not None else None,
            tuple(augment_snr_db) if augment_snr_db is not None else None,
            float(augment_shift),
            float(augment_speed),
        )
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._specs: list[RecordingSpec] | None = None
        self._spec_warnings: list[Problem] = []
        self._channels: list[str] | None = list(channels) if channels else None
        self._sample_rate: float | None = float(sample_rate) if sample_rate else None
        self.frontend: SpectrogramFrontend | None = None
        self.dataset: LoadedDataset | None = None
        self.plan: SplitPlan | None = None
        self.indices: dict[str, np.ndarray] = {}
        self._labels: np.ndarray | None = None
        self._device: torch.device | None = None
        self._predict: PredictRecordings | None = None
        self._frontend_state: dict[str, Tensor] | None = None
        #: The sensor-health gate's record for the model card (``None`` with ``health: off``).
        self.sensor_health: SensorHealthCard | None = None
        #: The RMS reference the gate compares with (fitted on the data, or the checkpoint's).
        self.health_reference: SensorReference | None = None
        self._findings: list[list[SensorFinding]] = []
        self._excluded: list[str] = []
        self._predict_findings: list[list[SensorFinding]] | None = None

    @property
    def reader_options(self) -> ReaderOptions:
        """Format options handed to the readers (``.mat`` variables, ``.tdms`` group)."""
        variables = self.hparams.variables
        return ReaderOptions(tuple(variables) if variables else None, self.hparams.tdms_group)

    # ----------------------------------------------------------------- lazy facts from the files
    @property
    def data_root(self) -> Path:
        """The dataset folder (the built-in dataset's cache folder when ``data_dir`` is None)."""
        if self.hparams.data_dir:
            return Path(self.hparams.data_dir).expanduser()
        from damage_lightning.data.synthetic import default_dataset_dir

        return default_dataset_dir(
            self.cache_dir,
            seed=self.hparams.synthetic_seed,
            scenario=self.hparams.synthetic_scenario,
        )

    @property
    def recordings(self) -> list[RecordingSpec]:
        """The recordings found in ``data_dir`` (discovery only; files are read in ``setup``)."""
        if self._specs is None:
            self._specs, self._spec_warnings = discover_with_warnings(
                self.data_root, self.hparams.manifest
            )
        return self._specs

    @property
    def class_names(self) -> list[str]:
        """Sorted class labels; the model's output index ``i`` is ``class_names[i]``.

        For novelty detection (:attr:`novelty`) the healthy label comes first.
        """
        if self.dataset is not None:
            names = list(self.dataset.class_names)
        else:
            names = sorted({r.label for r in self.recordings})
        healthy = self._healthy(names)
        return names if healthy is None else [healthy, *(n for n in names if n != healthy)]

    @property
    def novelty(self) -> bool:
        """Whether the data are for a novelty detector: ``healthy_label`` set, or one class."""
        return self.healthy_class is not None

    @property
    def healthy_class(self) -> str | None:
        """The healthy label a novelty detector trains on (``None``: classification data)."""
        return self._healthy(sorted({r.label for r in self.recordings}))

    def _healthy(self, names: list[str]) -> str | None:
        wanted = self.hparams.healthy_label
        if len(names) == 1:
            # One class is healthy data whatever it is called: the folder may say "normal".
            return names[0]
        if wanted is None:
            return None
        if wanted not in names:
            raise DataValidationError(
                Problem(
                    str(self.data_root),
                    "",
                    f"data.healthy_label {wanted!r} is not a label of the data "
                    f"({', '.join(names)}); set it to the label of the healthy recordings",
                )
            )
        return wanted

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def channels(self) -> list[str]:
        """Sensor channel names in model input order."""
        if self._channels is None:
            if self.dataset is not None:
                self._channels = list(self.dataset.channels)
            else:
                first = self.recordings[0]
                self._channels = read_channel_names(first.path, self.reader_options, first.relpath)
        return list(self._channels)

    @property
    def in_channels(self) -> int:
        """Number of input channels of the network."""
        return len(self.channels)

    @property
    def sample_rate(self) -> float:
        """Sampling rate in Hz (configured, or read from the data)."""
        if self._sample_rate is None:
            if self.dataset is None:
                rates = {r.sample_rate for r in self.recordings if r.sample_rate}
                if len(rates) == 1:
                    self._sample_rate = float(rates.pop())
                else:
                    # A time column may carry the rate: reading the data is the only way to know.
                    self._load()
            if self._sample_rate is None:
                assert self.dataset is not None
                self._sample_rate = float(self.dataset.sample_rate)
        return self._sample_rate

    def frontend_settings(self) -> dict[str, Any]:
        """Constructor arguments of the spectrogram front end."""
        hp = self.hparams
        return {
            "sample_rate": self.sample_rate,
            "n_channels": self.in_channels,
            "kind": hp.spectrogram,
            "n_fft": hp.n_fft,
            "hop_length": hp.hop_length,
            "n_mels": hp.n_mels,
            "f_min": hp.f_min,
            "f_max": hp.f_max,
            "power": hp.power,
            "top_db": hp.top_db,
            "stft": hp.stft_impl,
            "center": hp.center,
            "average_frames": hp.average_frames,
            "envelope_bands": hp.envelope_bands,
            "envelope_f_max": hp.envelope_f_max,
            "instance_norm": hp.instance_norm,
            "whiten": hp.whiten,
            **{k: hp[k] for k in ("order", "orders_max", "n_orders")},
        }

    def _build_frontend(self) -> SpectrogramFrontend:
        if self.frontend is None:
            self.frontend = SpectrogramFrontend(**self.frontend_settings())
            if self._frontend_state is not None:
                self.frontend.load_state_dict(self._frontend_state)
        return self.frontend

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Spectrogram shape ``(channels, freq, frames)`` seen by the network."""
        return tuple(self._build_frontend().output_shape(self.window))  # type: ignore[return-value]

    # ------------------------------------------------------------------------------ loading
    def prepare_data(self) -> None:
        """Generate the built-in dataset and fill the waveform cache (once, on one process)."""
        self._load()

    def _load(self) -> LoadedDataset:
        if self.dataset is None:
            ds = load_dataset(
                self.data_root,
                self.hparams.manifest,
                channels=self._channels,
                sample_rate=self._sample_rate,
                min_samples=self.window,
                cache_dir=self.cache_dir,
                options=self.reader_options,
                min_classes=1 if self.novelty else 2,
            )
            ds.warnings[:0] = [w for w in self._spec_warnings if w not in ds.warnings]
            if rank_zero_only.rank == 0:
                # Printed (not only logged): the root logger has no console handler while the
                # CLI copies output into training_log.txt, and users must see these warnings.
                for w in ds.warnings:
                    print(f"data warning: {w}", file=sys.stderr)
            self.dataset = ds
            self._channels = list(ds.channels)
            self._sample_rate = float(ds.sample_rate)
        return self.dataset

    def setup(self, stage: str | None = None) -> None:
        """Read and validate all recordings, split them, cut windows, fit the normalisation."""
        self._speeds(self.recordings)  # a missing speed is named before any file is read
        ds = self._load()
        if self.plan is None:
            ds = self._apply_health(ds)
            healthy = self.healthy_class
            planner = plan_splits if healthy is None else plan_novelty_splits
            extra = {} if healthy is None else {"healthy": healthy}
            try:
                plan = planner(
                    labels=ds.labels,
                    lengths=[w.shape[1] for w in ds.waveforms],
                    window=self.window,
                    hop=self.hop,
                    groups=[r.group for r in ds.recordings],
                    explicit=[r.split for r in ds.recordings],
                    fractions=(
                        1.0 - self.hparams.val_fraction - self.hparams.test_fraction,
                        self.hparams.val_fraction,
                        self.hparams.test_fraction,
                    ),
                    seed=self.hparams.seed,
                    strategy=self.hparams.split_strategy,
                    relpaths=[r.relpath for r in ds.recordings],
                    **extra,
                )
            except DataValidationError as exc:
                rethrow_with_exclusions(exc, self._excluded, str(self.data_root))
            self.plan = plan
            classes = self.class_names
            self._labels = np.array([classes.index(lab) for lab in ds.labels], dtype=np.int64)
            self.indices = {
                s: build_window_index(self.plan, s, self.window, self.hop) for s in SPLITS
            }
            self._flag_windows()
            empty = [s for s in SPLITS if len(self.indices[s]) == 0 and self._fraction(s) > 0]
            if empty:
                raise DataValidationError(
                    Problem(
                        str(self.data_root),
                        "",
                        f"the {', '.join(empty)} split has no window of {self.window} samples; "
                        "use shorter windows or more data",
                    )
                )
        self._device = self._choose_device()
        frontend = self._build_frontend()
        if not bool(frontend.fitted) and self._frontend_state is None:
            self._fit_normalization()
        if stage == "predict" and self.hparams.predict_data_dir:
            self._predict = self._load_predict_recordings()

    def _fraction(self, split: str) -> float:
        return {
            "train": 1.0,
            "val": self.hparams.val_fraction,
            "test": self.hparams.test_fraction,
        }[split]

    # ------------------------------------------------------------------ sensor health
    def _apply_health(self, ds: LoadedDataset) -> LoadedDataset:
        """Run the sensor-health gate on the loaded recordings (before the split)."""
        gate = apply_gate(
            ds, self.hparams.health, str(self.data_root), echo=rank_zero_only.rank == 0
        )
        self.dataset, self._findings, self._excluded = gate.dataset, gate.findings, gate.excluded
        self.sensor_health = gate.card
        if self.health_reference is None:
            self.health_reference = gate.reference
        return gate.dataset

    def _flag_windows(self) -> None:
        """Count (and with ``exclude_windows`` drop) the windows of each split at a finding."""
        drop = self.hparams.health == "exclude_windows"
        counts = {}
        for s in SPLITS:
            self.indices[s], counts[s] = flag_split_windows(
                self.indices[s], self._findings, self.window, drop
            )
        if self.sensor_health is not None:
            self.sensor_health.flagged_windows = counts

    def restore_health_reference(self, reference: dict[str, Any] | None) -> None:
        """Take the RMS reference of a checkpoint (``predict`` then judges by the training data).

        Args:
            reference: the checkpoint's ``SensorReference`` as JSON values (``None``: a
                checkpoint from before the gate; the reference fitted on these data is kept).
        """
        if reference:
            self.health_reference = SensorReference.from_json(reference, where="health_reference")
            self._predict_findings = None

    def _choose_device(self) -> torch.device | None:
        """Where batches are cut: on the accelerator when the data fit, else from host memory."""
        mode = self.hparams.device_data
        if mode == "off":
            return None
        root = None
        if self.trainer is not None:
            root = self.trainer.strategy.root_device
        if root is None or root.type != "cuda":
            return torch.device("cpu") if mode == "on" else None
        assert self.dataset is not None
        nbytes = sum(w.nbytes for w in self.dataset.waveforms)
        free, _ = torch.cuda.mem_get_info(root)
        if mode == "on" or nbytes < DEVICE_MEMORY_SHARE * free:
            return root
        return None

    def _fit_normalization(self) -> None:
        assert self.dataset is not None and self.frontend is not None
        index = self.indices["train"]
        if len(index) > MAX_NORM_WINDOWS:
            rng = np.random.default_rng(self.hparams.seed)
            index = index[np.sort(rng.choice(len(index), MAX_NORM_WINDOWS, replace=False))]
        loader = WindowBatchLoader(
            self.dataset.waveforms, index, self._labels, self.window, batch_size=512
        )
        # On the accelerator when there is one: the spectrograms of every training window are
        # computed here once, which on a CPU takes as long as a training epoch's front end.
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None:
            self.frontend.to(device)
        self.frontend.fit_normalization(batch[0] for batch in loader)

    # ----------------------------------------------------------------------------- loaders
    def _loader(
        self, split: str, shuffle: bool, with_positions: bool = False, host: bool = False
    ) -> WindowBatchLoader:
        # The loader exposes ``sampler.set_epoch``: Lightning calls it with the epoch count that
        # survives a resume, so a resumed run shuffles exactly like an uninterrupted one.
        if self.dataset is None or split not in self.indices:
            self.setup(split)
        assert self.dataset is not None
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        workers = self.hparams.num_workers
        device = None if host else self._device
        if workers and device is None:
            loader_class, extra = PrefetchingWindowLoader, {"workers": workers}
        else:
            loader_class, extra = WindowBatchLoader, {}
        loader = loader_class(
            self.dataset.waveforms,
            self.indices[split],
            self._labels,
            self.window,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=False,
            seed=self.hparams.seed,
            device=device,
            rank=rank,
            world_size=world,
            pin_memory=device is None and torch.cuda.is_available() and not host,
            with_positions=with_positions,
            speeds=self._speeds(self.dataset.recordings),
            **extra,
        )
        return loader

    def train_dataloader(self) -> WindowBatchLoader:
        """Shuffled training windows (for novelty detection with recording and start)."""
        return self._loader("train", shuffle=True, with_positions=self.novelty)

    def val_dataloader(self) -> WindowBatchLoader:
        """Validation windows, in order (for novelty detection with recording and start)."""
        return self._loader("val", shuffle=False, with_positions=self.novelty)

    def test_dataloader(self) -> WindowBatchLoader:
        """Test windows, in order, with their recording and start (recording-level verdicts)."""
        return self._loader("test", shuffle=False, with_positions=True)

    def waveform_windows(self, split: str) -> WindowBatchLoader:
        """Raw waveform windows of ``split`` in order, on the CPU, with recording and start.

        Batches are ``(waveform, label, recording, start)``: what a reference method that
        works on waveforms (not spectrograms) needs, e.g. the novelty task's classical
        baseline.

        Args:
            split: ``train``, ``val`` or ``test``.
        """
        return self._loader(split, shuffle=False, with_positions=True, host=True)

    def _speeds(self, specs: list[RecordingSpec]) -> np.ndarray | None:
        """Each recording's rpm (manifest ``rpm_column``) with ``order``, else ``None``."""
        return recording_speeds(specs, self.hparams.rpm_column) if self.hparams.order else None

    # ---------------------------------------------------------------------- spectrograms
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn the waveform of each batch into its spectrogram, on the batch's device.

        Training batches are augmented first (:attr:`augment`); no other batch ever is. With
        ``order`` the rpm (last) goes into the front end (times a window's speed jitter factor)
        and leaves the batch, which is then what it is without ``order``.
        """
        (waveform, *rest), rpm = split_speed(batch, self.hparams.order)
        if self.augment.enabled and self.trainer is not None and self.trainer.training:
            augmented = self.augment_batch(waveform)
            waveform = augmented.waveform
            rpm = None if rpm is None else rpm * augmented.speed
        return (self.spectrogram(waveform, rpm), *rest)

    def augment_batch(self, waveform: Tensor) -> AugmentedBatch:
        """The training batch now being transferred, augmented with this run's draws.

        The generator seed mixes ``seed``, the epoch, the batch's index in the epoch and the
        rank (:func:`damage_lightning.data.augment.batch_seed`).

        Args:
            waveform: ``(B, C, window)`` training windows.
        """
        trainer = self.trainer
        assert trainer is not None
        # Lightning counts a batch as "ready" right after this hook: before it, the count is the
        # index of the batch being transferred (and it survives a mid-epoch resume).
        index = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        seed = batch_seed(self.hparams.seed, trainer.current_epoch, index, trainer.global_rank)
        return augment(waveform, self.augment, seed)

    def spectrogram(self, waveform: Tensor, rpm: Tensor | None = None) -> Tensor:
        """Normalised log spectrograms ``(B, C, F, T)`` of windows ``(B, C, window)`` and rpm."""
        frontend = self._build_frontend()
        if frontend.mean.device != waveform.device:
            frontend.to(waveform.device)
        rpm = None if rpm is None else rpm.to(waveform.device, torch.float32)
        with torch.autocast(waveform.device.type, enabled=False):
            return frontend(waveform.float(), rpm)

    def spectrogram_batch(self, split: str = "train") -> tuple[Tensor, Tensor]:
        """One batch of ``split`` as ``(spectrogram, label)``: the one-call view for notebooks."""
        batch = next(iter(self._loader(split, shuffle=False)))
        (waveform, label), rpm = split_speed(batch, self.hparams.order)
        return self.spectrogram(waveform, rpm), label

    def plot_spectrogram(
        self, split: str = "train", index: int = 0, channel: int = 0, ax: Any = None
    ) -> Any:
        """Draw the spectrogram of one window of ``split``, axes in hertz and seconds.

        Args:
            split: ``train``, ``val`` or ``test``.
            index: the window's position in the split (in order, not shuffled).
            channel: the sensor channel to draw.
            ax: matplotlib axes to draw into (``None``: a new figure).

        Returns:
            The matplotlib axes.
        """
        from damage_lightning.data.plotting import plot_window

        return plot_window(self, split, index=index, channel=channel, ax=ax)

    # ---------------------------------------------------------------------------- weights
    def class_weight_tensor(self) -> Tensor | None:
        """Inverse-frequency weights of the training windows, ``N / (K * n_c)`` per class.

        Returns:
            float32 ``(num_classes,)``, or ``None`` when ``class_weights`` is off.
        """
        if not self.hparams.class_weights:
            return None
        if not self.indices:
            self.setup("fit")
        assert self._labels is not None
        counts = np.bincount(
            self._labels[self.indices["train"][:, 0]], minlength=self.num_classes
        ).astype(np.float64)
        counts[counts == 0] = 1.0
        weights = counts.sum() / (len(counts) * counts)
        return torch.tensor(weights, dtype=torch.float32)

    # ------------------------------------------------------------------------- summaries
    def data_summary(self) -> dict[str, Any]:
        """Recordings and windows per class and split, for model_info.json and the report."""
        assert self.dataset is not None and self.plan is not None and self._labels is not None
        names = self.class_names
        per_class: dict[str, dict[str, dict[str, int]]] = {
            c: {s: {"recordings": 0, "windows": 0} for s in SPLITS} for c in names
        }
        for s in SPLITS:
            recs = {seg.recording for seg in self.plan.segments_for(s)}
            for r in recs:
                per_class[names[self._labels[r]]][s]["recordings"] += 1
            idx = self.indices[s]
            counts = np.bincount(self._labels[idx[:, 0]], minlength=len(names))
            for i, c in enumerate(names):
                per_class[c][s]["windows"] = int(counts[i])
        return {
            "data_dir": str(self.data_root),
            "builtin": self.hparams.data_dir is None,
            "n_recordings": len(self.dataset.recordings),
            "per_class": per_class,
            "windows": {s: len(self.indices[s]) for s in SPLITS},
            "warnings": [str(w) for w in self.dataset.warnings],
        }

    def group_keys(self) -> list[str]:
        """The group of every recording (its path when the data name no group), by index."""
        assert self.dataset is not None
        return [r.group or f"recording:{r.relpath}" for r in self.dataset.recordings]

    def splits_json(self) -> dict[str, Any]:
        """The split assignment as written to ``splits.json``."""
        assert self.dataset is not None and self.plan is not None
        ds = self.dataset
        return self.plan.to_json(
            [r.relpath for r in ds.recordings],
            ds.labels,
            [r.group for r in ds.recordings],
            [w.shape[1] for w in ds.waveforms],
        )

    # ------------------------------------------------------------------ checkpoint state
    # The checkpoint's ``damage_lightning`` section (export.spec.ExportSpec, written by the task)
    # is the one record of the front end's settings and statistics; the DataModule keeps no copy
    # of its own in the checkpoint and is restored from that section.
    def restore_frontend_state(self, state: dict[str, Tensor], class_names: list[str]) -> None:
        """Take the training split's normalisation statistics from a checkpoint.

        Args:
            state: the front end's buffers, as saved.
            class_names: the classes the checkpoint was trained on; they must be the data's.

        Raises:
            DataValidationError: the data have other classes than the checkpoint.
        """
        if class_names and list(class_names) != self.class_names:
            raise DataValidationError(
                Problem(
                    str(self.data_root),
                    "",
                    f"the checkpoint was trained on classes {list(class_names)}, "
                    f"the data have {self.class_names}",
                )
            )
        self._frontend_state = dict(state)
        if self.frontend is not None:
            device = self.frontend.mean.device
            self.frontend.load_state_dict(self._frontend_state)
            self.frontend.to(device)
