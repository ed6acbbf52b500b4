"""Test-time BatchNorm adaptation (AdaBN): BatchNorm statistics re-estimated on target data.

A network trained on one machine normalises its activations with the training data's means and
variances. On another machine (other speed, load, mounting, sensor) those statistics shift, and
re-estimating them on that machine's unlabelled windows often recovers much of the lost accuracy
(Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", 2016). It learns
nothing about labels: no weight changes, only the running mean and variance of each BatchNorm
layer. It needs many windows (hundreds or more) of the target machine in normal operation, in
the mix of conditions the model will then judge: adapted to a single faulty recording, the
statistics describe that fault as "normal".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class BatchNormAdaptation:
    """What :func:`adapt_batchnorm` did.

    Attributes:
        layers: BatchNorm layers whose statistics were re-estimated.
        batches: batches seen.
        windows: windows seen.
    """

    layers: int
    batches: int
    windows: int


def adapt_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> BatchNormAdaptation:
    """Reset, then re-estimate, every BatchNorm layer's running statistics on ``batches``.

    The model runs without gradients, with dropout and every other layer in eval mode and only
    the BatchNorm layers in train mode with ``momentum=None`` (a cumulative average over the
    batches, each batch weighted alike). Afterwards each module has its former mode and momentum
    back; the weights and every other buffer are untouched.

    Args:
        model: the network (or a module around it) that takes the batches as input.
        batches: model inputs, on the model's device.

    Returns:
        How many layers, batches and windows took part.

    Raises:
        ValueError: the model has no BatchNorm layer that tracks running statistics, or
            ``batches`` is empty.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        raise ValueError("the model has no BatchNorm layer with running statistics to adapt")
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in norms
    ]
    n_batches = n_windows = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in batches:
                model(x)
                n_batches += 1
                n_windows += int(x.shape[0])
        if n_batches == 0:
            raise ValueError("no windows to adapt the BatchNorm statistics on")
    except BaseException:
        # A failed adaptation leaves the statistics it found, not half-estimated ones.
        for m, (mean, var, count) in zip(norms, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        raise
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return BatchNormAdaptation(len(norms), n_batches, n_windows)
