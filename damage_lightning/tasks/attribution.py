"""Attribution of a trained classifier on the test split, per class, per channel, in hertz.

:func:`attribute` explains the decisions of a classification task on a DataModule's test windows
and returns the typed :class:`~damage_lightning.evaluation.attribution.Attribution`;
:func:`run_attribution` is the end of ``fit``: it writes ``attribution.json`` and returns the
model card's summary. The numbers are contributions to the log-odds of the true class measured
against a physically neutral baseline (the mean training spectrogram of the healthy class), not
against zeros: in a normalised log spectrogram a band of zeros is a large change that no
structure produces, and what it measures is the network's response to that artefact.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from damage_lightning.card import AttributionCard
from damage_lightning.data.windows import WindowBatchLoader
from damage_lightning.evaluation.attribution import (
    ATTRIBUTION_FILE,
    Attribution,
    AttributionOptions,
    ClassAttribution,
    auto_band_hz,
    band_edges,
    band_index,
    reference_class,
)

log = logging.getLogger(__name__)

#: Training windows per class whose mean spectrogram makes a baseline (evenly spread).
BASELINE_WINDOWS = 64
#: Spectrograms per forward pass (perturbed or interpolated copies of the windows).
CHUNK = 256
TARGET = "log-odds of the true class: logit - logsumexp(other logits)"

Forward = Callable[[Tensor], Tensor]


def log_odds(logits: Tensor, target: Tensor) -> Tensor:
    """``logit_y - logsumexp(other logits)`` per row: ``log(p_y / (1 - p_y))`` of the softmax.

    Args:
        logits: ``(B, K)``.
        target: ``(B,)`` class indices.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.masked_fill(torch.nn.functional.one_hot(target, logits.shape[1]).bool(), -1e30)
    return own - torch.logsumexp(others, dim=1)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def integrated_gradients(
    forward: Forward, x: Tensor, target: Tensor, baseline: Tensor, steps: int
) -> Tensor:
    """Integrated gradients of the log-odds from ``baseline`` to ``x``, summed over frames.

    Midpoint rule on the straight path: ``(x - b) * mean_s grad m(b + a_s (x - b))`` with
    ``a_s = (s + 1/2) / steps``. The contributions add up to ``m(x) - m(b)`` (exactly for a
    network linear in its input, up to the quadrature error otherwise).

    Args:
        forward: spectrograms ``(B, C, F, T)`` to logits ``(B, K)``.
        x: ``(N, C, F, T)`` windows.
        target: ``(N,)`` the class of each window.
        baseline: ``(N, C, F, T)`` the baseline of each window.
        steps: points on the path.

    Returns:
        ``(N, C, F)`` contributions.
    """
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    delta = x - baseline
    grads = torch.zeros_like(x)
    # All windows and steps in one flat batch, cut into chunks of CHUNK spectrograms.
    n = x.shape[0] * steps
    for part in _chunks(n, CHUNK):
        window = torch.arange(part.start, part.stop, device=x.device) // steps
        alpha = alphas[torch.arange(part.start, part.stop, device=x.device) % steps]
        path = (baseline[window] + alpha.view(-1, 1, 1, 1) * delta[window]).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(log_odds(forward(path), target[window]).sum(), path)
        grads.index_add_(0, window, grad.detach())
    return (delta * grads / steps).sum(dim=-1)


def occlusion(
    forward: Forward, x: Tensor, target: Tensor, baseline: Tensor, band: np.ndarray
) -> Tensor:
    """Drop of the log-odds when one band of one channel is replaced by the baseline.

    Args:
        forward: spectrograms ``(B, C, F, T)`` to logits ``(B, K)``.
        x: ``(N, C, F, T)`` windows.
        target: ``(N,)`` the class of each window.
        baseline: ``(N, C, F, T)`` the baseline of each window.
        band: ``(F,)`` the band of each spectrogram row (``0 .. n_bands - 1``).

    Returns:
        ``(N, C, n_bands)``: ``m(x) - m(x with the band of the channel from the baseline)``.
    """
    n, channels, rows = x.shape[:3]
    n_bands = int(band.max()) + 1
    member = torch.zeros(n_bands, rows, dtype=x.dtype, device=x.device)
    member[torch.as_tensor(band, device=x.device), torch.arange(rows, device=x.device)] = 1.0
    # Mask m of perturbation (c, b): channel c, the rows of band b; one per output cell.
    masks = torch.zeros(channels, n_bands, channels, rows, 1, dtype=x.dtype, device=x.device)
    for c in range(channels):
        masks[c, :, c, :, 0] = member
    masks = masks.reshape(channels * n_bands, channels, rows, 1)
    per_window = masks.shape[0]
    out = torch.empty(
        n, per_window, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device
    )
    with torch.no_grad():
        full = log_odds(forward(x), target)
        for part in _chunks(n * per_window, CHUNK):
            flat = torch.arange(part.start, part.stop, device=x.device)
            window, cell = flat // per_window, flat % per_window
            mask = masks[cell]
            perturbed = x[window] * (1 - mask) + baseline[window] * mask
            drop = full[window] - log_odds(forward(perturbed), target[window])
            out.view(-1)[part] = drop
    return out.view(n, channels, n_bands)


# ----------------------------------------------------------------------------------------------
# A task and its DataModule


def _labels(datamodule: Any) -> np.ndarray:
    names = datamodule.class_names
    return np.array([names.index(lab) for lab in datamodule.dataset.labels], dtype=np.int64)


def _spread(rows: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``rows``, evenly spread (so over the recordings, which come in order)."""
    if len(rows) <= n:
        return rows
    return rows[np.round(np.linspace(0, len(rows) - 1, n)).astype(np.int64)]


def _spectrograms(datamodule: Any, index: np.ndarray, device: torch.device) -> Tensor:
    loader = WindowBatchLoader(
        datamodule.dataset.waveforms, index, None, datamodule.window, batch_size=CHUNK
    )
    with torch.no_grad():
        parts = [datamodule.spectrogram(w.to(device)) for w, _ in loader]
    return torch.cat(parts).float()


def _class_windows(
    datamodule: Any, split: str, labels: np.ndarray, per_class: int
) -> list[np.ndarray]:
    index = datamodule.indices[split]
    window_labels = labels[index[:, 0]]
    return [
        _spread(index[window_labels == k], per_class) for k in range(len(datamodule.class_names))
    ]


def _baselines(
    datamodule: Any, labels: np.ndarray, reference: str | None, device: torch.device
) -> tuple[list[Tensor], str]:
    """One baseline spectrogram ``(C, F, T)`` per class, and the rule in words."""
    names = datamodule.class_names
    train = _class_windows(datamodule, "train", labels, BASELINE_WINDOWS)
    means = [
        _spectrograms(datamodule, rows, device).mean(dim=0) if len(rows) else None for rows in train
    ]
    counts = [len(rows) for rows in train]

    def mean_of(classes: list[int]) -> Tensor:
        weights = [counts[k] for k in classes if means[k] is not None]
        stacked = torch.stack([means[k] for k in classes if means[k] is not None])
        w = torch.tensor(weights, dtype=stacked.dtype, device=device)
        return (stacked * w.view(-1, 1, 1, 1)).sum(dim=0) / w.sum()

    others = [mean_of([j for j in range(len(names)) if j != k]) for k in range(len(names))]
    if reference is None:
        return others, "the mean training spectrogram of the other classes"
    ref = names.index(reference)
    if means[ref] is None:
        raise ValueError(f"the reference class {reference!r} has no training window")
    baselines = [others[k] if k == ref else means[ref] for k in range(len(names))]
    rule = (
        f"the mean training spectrogram of {reference!r}; for {reference!r} itself, the mean of "
        "the other classes"
    )
    return baselines, rule


def attribute(
    task: Any, datamodule: Any, options: AttributionOptions | None = None, split: str = "test"
) -> Attribution:
    """Attribute a trained classifier's decisions on ``split`` to channels and frequencies.

    Works on any device the task is on; the task is put in eval mode for the computation and
    returned to its former mode.

    Args:
        task: a classification task (``ClassificationTask``) with trained weights.
        datamodule: the ``DamageDataModule`` it was trained on, set up (its front end fitted).
        options: method, windows per class, steps, band width and reference class.
        split: ``test`` (or ``val``, ``train``).

    Returns:
        The typed record of ``attribution.json``.

    Raises:
        ValueError: the reference class does not exist or has no training window.
    """
    options = options or AttributionOptions()
    started = time.perf_counter()
    if datamodule.dataset is None or split not in datamodule.indices:
        datamodule.setup("test")
    device = next(task.parameters()).device
    names = list(datamodule.class_names)
    reference = reference_class(names, options.reference)
    frontend = datamodule.frontend
    centre, low, high = frontend.row_frequencies()
    band_hz = options.band_hz or auto_band_hz(float(low.min()), float(high.max()))
    labels = _labels(datamodule)
    baselines, rule = _baselines(datamodule, labels, reference, device)
    edges = band_edges(centre, band_hz)
    rows_band = band_index(centre, edges)
    if options.method == "occlusion":
        used = np.unique(rows_band)
        # Cells are the occluded bands that hold rows: their centres and edges.
        remap = np.searchsorted(used, rows_band)
        cells = (edges[used] + edges[used + 1]) / 2, edges[used], edges[used + 1]
    else:
        cells = centre, low, high

    band = remap if options.method == "occlusion" else None
    windows = _class_windows(datamodule, split, labels, options.windows_per_class)
    was_training = task.training
    task.eval()
    try:
        records = [
            _class_record(task, datamodule, k, rows, baselines[k], options, band)
            for k, rows in enumerate(windows)
        ]
    finally:
        task.train(was_training)
    return Attribution(
        method=options.method,
        target=TARGET,
        baseline=rule,
        reference_class=reference,
        split=split,
        windows_per_class=options.windows_per_class,
        steps=options.steps if options.method == "integrated_gradients" else None,
        band_hz=float(band_hz),
        channels=list(datamodule.channels),
        freq_hz=[float(f) for f in cells[0]],
        freq_low_hz=[float(f) for f in cells[1]],
        freq_high_hz=[float(f) for f in cells[2]],
        classes=records,
        wall_time_s=round(time.perf_counter() - started, 3),
    )


def _class_record(
    task: Any,
    datamodule: Any,
    k: int,
    rows: np.ndarray,
    baseline: Tensor,
    options: AttributionOptions,
    band: np.ndarray | None,
) -> ClassAttribution:
    """The mean attribution of class ``k`` over its windows ``rows`` (``band``: occlusion's)."""
    name = datamodule.class_names[k]
    device = baseline.device
    dtype = next(task.parameters()).dtype

    def forward(spectrogram: Tensor) -> Tensor:
        # A network trained in bf16-true (or fp16) takes its own dtype; the path stays float32.
        return task(spectrogram.to(dtype))

    channels = len(datamodule.channels)
    n_cells = datamodule.frontend.n_freqs if band is None else int(band.max()) + 1
    if len(rows) == 0:
        zeros = [[0.0] * n_cells for _ in range(channels)]
        return ClassAttribution(
            name=name, windows=0, recordings=[], log_odds=0.0, baseline_log_odds=0.0, values=zeros
        )
    x = _spectrograms(datamodule, rows, device)
    target = torch.full((x.shape[0],), k, dtype=torch.int64, device=device)
    base = baseline.expand_as(x)
    if band is None:
        values = integrated_gradients(forward, x, target, base, options.steps)
    else:
        values = occlusion(forward, x, target, base, band)
    with torch.no_grad():
        odds = log_odds(forward(x), target)
        base_odds = log_odds(forward(baseline[None]), target[:1])
    return ClassAttribution(
        name=name,
        windows=int(x.shape[0]),
        recordings=[datamodule.dataset.recordings[r].relpath for r in sorted(set(rows[:, 0]))],
        log_odds=round(float(odds.mean()), 6),
        baseline_log_odds=round(float(base_odds[0]), 6),
        values=np.round(values.mean(dim=0).double().cpu().numpy(), 7).tolist(),
    )


def run_attribution(
    task: Any, datamodule: Any, run_dir: Path, options: dict[str, Any] | None = None
) -> AttributionCard | None:
    """The end of ``fit``: write ``attribution.json`` into the run folder, return the card's part.

    Skipped (``None``) when disabled or for a task that is not a classifier (a novelty
    detector has no classes to explain). A failure is logged and printed as a warning and never
    fails the run: the trained model and its exports are already written.

    Args:
        task: the trained task (best weights).
        datamodule: its DataModule.
        run_dir: the run folder.
        options: the ``AttributionOptions`` fields (the CLI's ``--attribution.*``).
    """
    from damage_lightning.tasks.classification import ClassificationTask

    opts = AttributionOptions(**(options or {}))
    if not opts.enabled or not isinstance(task, ClassificationTask):
        return None
    if datamodule.hparams.get("order", False):
        # Attribution is in hertz; the rows of order spectra are orders of each window's speed.
        print("attribution: skipped (it is in hertz, and data.order gives spectra in orders)")
        return None
    try:
        result = attribute(task, datamodule, opts)
        result.write(Path(run_dir) / ATTRIBUTION_FILE)
    except Exception as exc:  # an explanation problem must never lose the trained model
        log.exception("the attribution could not be computed")
        print(f"warning: the attribution could not be computed: {exc}", file=sys.stderr)
        return None
    print(f"attribution: {ATTRIBUTION_FILE} ({opts.method}, {result.wall_time_s:.1f} s)")
    return result.card(ATTRIBUTION_FILE)
