"""Read, validate and resample recordings: one file, or a whole labelled data folder.

Training, ``predict`` and the gateway all read a file through :func:`load_recording`.
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.cache import WaveformCache
from damage_lightning.io.checks import channel_warnings, fmt_rate, resample, same_rate
from damage_lightning.io.discovery import RecordingSpec, _discover
from damage_lightning.io.readers import reader_for
from damage_lightning.io.readers.base import RawRecording, ReaderOptions, check_raw, select_channels

#: Bump when reading or resampling changes the arrays produced, so that cached entries miss.
PARSER_VERSION = 2


@dataclass
class Recording:
    """One recording read and validated, at the rate the model works at.

    Args:
        data: float32 ``(channels, samples)`` (a read-only memory map when cached).
        channels: channel names, one per row.
        sample_rate: the rate of ``data`` in Hz, or ``None`` when neither the file, the manifest
            nor the caller knows it.
        warnings: problems worth a look that do not stop anything (flat or clipped channels).
    """

    data: np.ndarray
    channels: list[str]
    sample_rate: float | None
    warnings: list[Problem] = field(default_factory=list)


@dataclass
class LoadedDataset:
    """All recordings of a data folder, parsed and validated.

    Args:
        recordings: the recordings, in discovery order.
        waveforms: one float32 ``(channels, samples)`` array per recording.
        channels: channel names, in the order of the array rows.
        sample_rate: sample rate of every waveform, in Hz.
        warnings: problems worth a look that do not stop training (flat or clipped channels, empty
            label folders).
    """

    recordings: list[RecordingSpec]
    waveforms: list[np.ndarray]
    channels: list[str]
    sample_rate: float
    warnings: list[Problem] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The label of each recording."""
        return [str(r.label) for r in self.recordings]

    @property
    def class_names(self) -> list[str]:
        """Sorted unique labels."""
        return sorted(set(self.labels))


def read_recording(
    path: str | Path,
    channels: list[str] | None = None,
    display: str | None = None,
    options: ReaderOptions | None = None,
) -> RawRecording:
    """Read one file of any supported format, with the checks every format passes.

    Args:
        path: the recording.
        channels: channel names to return, in this order; ``None`` for all numeric channels.
        display: the file name used in error messages (default: ``path``).
        options: format options (``.mat`` variables, ``.tdms`` group).

    Raises:
        DataValidationError: naming the file, the location and the reason.
    """
    path = Path(path)
    display = display or str(path)
    options = options or ReaderOptions()
    raw = reader_for(path, display).read(path, display, options, channels)
    return check_raw(select_channels(raw, channels, display), display)


def read_channel_names(
    path: str | Path, options: ReaderOptions | None = None, display: str | None = None
) -> list[str]:
    """The channel names of a recording, from its header where the format has one (cheap)."""
    path = Path(path)
    display = display or str(path)
    return reader_for(path, display).channel_names(path, display, options or ReaderOptions())


def load_recording(
    spec: RecordingSpec,
    channels: list[str] | None = None,
    sample_rate: float | None = None,
    options: ReaderOptions | None = None,
    min_samples: int = 1,
    cache: WaveformCache | None = None,
) -> Recording:
    """Read, validate and (when its rate differs from ``sample_rate``) resample one recording.

    The recording's own rate comes from the file (a time column, a header) or the manifest; the
    two must agree. With ``sample_rate`` given, a recording at another known rate is resampled to
    it (polyphase filter, needs scipy); one of unknown rate is taken to be at ``sample_rate``.

    Args:
        spec: the recording (from discovery).
        channels: channels to use, in this order; ``None`` for all.
        sample_rate: the rate (Hz) the model works at; ``None`` keeps the recording's own.
        options: format options.
        min_samples: shortest acceptable recording after resampling (one window).
        cache: where parsed arrays are cached; ``None`` reads without a cache.

    Raises:
        DataValidationError: naming the file and the reason.
        OSError: the cache cannot be written (the caller may read on without it).
    """
    options = options or ReaderOptions()
    reader = reader_for(spec.path, spec.relpath)
    settings = {
        "parser": PARSER_VERSION,
        "reader": [reader.name, reader.version],
        "options": options.to_json(),
        "channels": channels,
        "sample_rate": sample_rate,
        "manifest_sample_rate": spec.sample_rate,
    }
    hit = cache.get(spec.path, settings) if cache is not None else None
    if hit is not None:
        data, meta = hit
        _check_rate_conflict(spec, meta.get("source_rate"))
        warns = [Problem(spec.relpath, loc, why) for loc, why in meta.get("warnings", [])]
        rec = Recording(data, list(meta["channels"]), meta.get("sample_rate"), warns)
    else:
        raw = read_recording(spec.path, channels, spec.relpath, options)
        _check_rate_conflict(spec, raw.sample_rate)
        found = channel_warnings(raw.data, raw.channels)
        own = raw.sample_rate if raw.sample_rate is not None else spec.sample_rate
        data, rate = raw.data, own
        if sample_rate is not None:
            rate = sample_rate
            if own is not None and not same_rate(own, sample_rate):
                data = _resample(data, own, sample_rate, spec.relpath)
        if cache is not None:
            meta = {
                "channels": raw.channels,
                "sample_rate": rate,
                "source_rate": raw.sample_rate,
                "warnings": [list(w) for w in found],
            }
            data = cache.put(spec.path, settings, data, meta)
        warns = [Problem(spec.relpath, loc, why) for loc, why in found]
        rec = Recording(data, list(raw.channels), rate, warns)
    n = rec.data.shape[1]
    if n < min_samples:
        raise DataValidationError(
            Problem(
                spec.relpath,
                "",
                f"recording has {n} samples, fewer than the {min_samples} required "
                "(at least one window)",
            )
        )
    return rec


def _resample(data: np.ndarray, own: float, target: float, display: str) -> np.ndarray:
    try:
        return resample(data, own, target)[0]
    except ImportError:
        raise DataValidationError(
            Problem(
                display,
                "",
                f"sampled at {fmt_rate(own)} but {fmt_rate(target)} is needed, and resampling "
                "needs scipy (pip install scipy), or resample the recording first",
            )
        ) from None


def _check_rate_conflict(spec: RecordingSpec, file_rate: float | None) -> None:
    if file_rate is not None and spec.sample_rate is not None:
        if not same_rate(file_rate, spec.sample_rate):
            raise DataValidationError(
                Problem(
                    spec.relpath,
                    "",
                    f"the time column gives {fmt_rate(file_rate)} but the manifest's sample_rate "
                    f"says {fmt_rate(spec.sample_rate)}",
                )
            )


@dataclass
class _Outcome:
    recording: Recording | None = None
    problems: list[Problem] = field(default_factory=list)


def _load_one(
    spec: RecordingSpec,
    channels: list[str] | None,
    sample_rate: float | None,
    options: ReaderOptions,
    cache: WaveformCache | None,
    cache_failed: list[str],
) -> _Outcome:
    try:
        use = None if cache_failed else cache
        try:
            return _Outcome(load_recording(spec, channels, sample_rate, options, 1, use))
        except OSError as exc:
            assert cache is not None
            cache_failed.append(f"{cache.root}: {exc.strerror or exc}")
            return _Outcome(load_recording(spec, channels, sample_rate, options, 1, None))
    except DataValidationError as exc:
        return _Outcome(problems=list(exc.problems))


def load_dataset(
    data_dir: str | Path,
    manifest: str | Path | None = None,
    channels: list[str] | None = None,
    sample_rate: float | None = None,
    min_samples: int = 1,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    options: ReaderOptions | None = None,
    min_classes: int = 2,
) -> LoadedDataset:
    """Discover, read and validate every recording of a data folder.

    All problems (per file and across files) are collected and raised together as one
    :class:`DataValidationError` before anything is returned. Across files, every recording must
    have the same channels in the same order (unless ``channels`` selects them) and the same
    sample rate. The rate comes from ``sample_rate`` when given: a recording whose own rate (time
    column or manifest) differs is resampled to it (see :func:`resample`); otherwise it comes from
    the time columns or the manifest, and must be known.

    Args:
        data_dir: the data folder (folder per class, or with a manifest).
        manifest: manifest path, relative to ``data_dir`` or absolute; see :func:`discover`.
        channels: channels to use, in this order; ``None`` for all (which must then match).
        sample_rate: the rate (Hz) the model works at; ``None`` to take it from the files.
        min_samples: shortest acceptable recording (after resampling), e.g. one window.
        cache_dir: where parsed arrays are cached; ``None`` reads without a cache.
        progress: print a progress line to stderr while reading.
        options: format options (``.mat`` variables, ``.tdms`` group).
        min_classes: fewest classes accepted: 2 for a classifier, 1 for a novelty detector's
            healthy-only data.

    Raises:
        DataValidationError: with every problem found.
    """
    specs, warnings, problems = _discover(data_dir, manifest)
    if not specs:
        raise DataValidationError(problems)
    if sample_rate is not None and not (math.isfinite(sample_rate) and sample_rate > 0):
        raise DataValidationError(
            f"data.sample_rate must be a positive number of Hz, got {sample_rate!r}",
            file=str(data_dir),
        )
    cache = WaveformCache(cache_dir) if cache_dir is not None else None
    options = options or ReaderOptions()
    cache_failed: list[str] = []
    results: list[_Outcome] = []
    workers = max(1, min(4, os.cpu_count() or 1, len(specs)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [
            pool.submit(_load_one, s, channels, sample_rate, options, cache, cache_failed)
            for s in specs
        ]
        for i, job in enumerate(jobs, 1):
            results.append(job.result())
            if progress:
                end = "\n" if i == len(jobs) else ""
                print(
                    f"\rReading recordings: {i}/{len(jobs)}", end=end, file=sys.stderr, flush=True
                )
    if cache_failed:
        warnings.append(
            Problem(cache_failed[0], "", "cannot write the waveform cache; reading without it")
        )
    for res in results:
        problems.extend(res.problems)
        if res.recording is not None:
            warnings.extend(res.recording.warnings)
    good = [
        (s, res.recording)
        for s, res in zip(specs, results, strict=True)
        if res.recording is not None
    ]

    # Channels: with no selection, every file must match the most common channel list.
    final_channels = list(channels) if channels is not None else []
    if good and channels is None:
        common = Counter(tuple(r.channels) for _, r in good).most_common(1)[0][0]
        final_channels = list(common)
        ref = next(s.relpath for s, r in good if tuple(r.channels) == common)
        for s, r in good:
            if tuple(r.channels) == common:
                continue
            missing = [c for c in common if c not in r.channels]
            extra = [c for c in r.channels if c not in common]
            detail = []
            if missing:
                detail.append("missing " + ", ".join(repr(c) for c in missing))
            if extra:
                detail.append("extra " + ", ".join(repr(c) for c in extra))
            if not missing and not extra:
                detail.append("same names in another order")
            problems.append(
                Problem(
                    s.relpath,
                    "header",
                    f"channels {r.channels} differ from {list(common)} of {ref} "
                    f"({'; '.join(detail)}); all files must share channels, "
                    "or select them with data.channels",
                )
            )

    # Sample rate.
    final_rate = sample_rate
    if sample_rate is None and good:
        known = [(s, r.sample_rate) for s, r in good if r.sample_rate is not None]
        if not known:
            problems.append(
                Problem(
                    str(data_dir),
                    "",
                    "sample rate unknown: add a time column, a manifest sample_rate column, "
                    "or set data.sample_rate",
                )
            )
        else:
            common_rate = Counter(rate for _, rate in known).most_common(1)[0][0]
            ref = next(s.relpath for s, rate in known if rate == common_rate)
            final_rate = common_rate
            for s, r in good:
                if r.sample_rate is None:
                    problems.append(
                        Problem(
                            s.relpath,
                            "",
                            f"sample rate unknown (no time column or manifest sample_rate) while "
                            f"{ref} has {fmt_rate(common_rate)}; set data.sample_rate",
                        )
                    )
                elif not same_rate(r.sample_rate, common_rate):
                    problems.append(
                        Problem(
                            s.relpath,
                            "",
                            f"sample rate {fmt_rate(r.sample_rate)} differs from "
                            f"{fmt_rate(common_rate)} of {ref}; set data.sample_rate to resample "
                            "all files to one rate",
                        )
                    )

    for s, r in good:
        n = r.data.shape[1]
        if n < min_samples:
            problems.append(
                Problem(
                    s.relpath,
                    "",
                    f"recording has {n} samples, fewer than the {min_samples} required "
                    "(at least one window)",
                )
            )

    labels = sorted({s.label for s in specs})
    if len(labels) < min_classes:
        problems.append(
            Problem(
                str(data_dir),
                "",
                f"only one class ('{labels[0]}') found; a classifier needs at least two classes "
                "(to train on healthy recordings only, use --config configs/novelty.yaml)",
            )
        )
    if problems:
        raise DataValidationError(problems)
    assert final_rate is not None
    return LoadedDataset(
        recordings=specs,
        waveforms=[r.data for _, r in good],
        channels=final_channels,
        sample_rate=float(final_rate),
        warnings=warnings,
    )
