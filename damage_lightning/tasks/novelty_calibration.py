"""Cross-group calibration: each group's training windows scored by a Gaussian fitted without it.

The default calibration scores healthy recordings held out from training, which tells how the
detector treats new recordings of the conditions it was trained on. When the conditions
themselves change from group to group (a machine's speed, a season), a held-out block of a
training group says nothing about a new group. Cross-group calibration (cross-conformal, with
the groups split into folds) fits the Gaussian without one fold of groups and scores that fold:
the scores then are those of conditions the Gaussian never saw. The deployed Gaussian is fitted to
all groups; a learned embedding is trained on all of them, so only the Gaussian is held out. The
guarantee of cross-conformal thresholds is weaker than split conformal's: at most twice the budget
in the worst case, about the budget for a stable fit such as a Gaussian.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from damage_lightning.tasks.novelty_net import GaussianScore


def group_folds(groups: list[str], folds: int, seed: int) -> dict[str, int]:
    """A fold for every group: a seeded permutation of the groups, dealt out in turn.

    Args:
        groups: the group of every recording (repeats allowed).
        folds: number of folds (at most the number of groups).
        seed: seed of the permutation.
    """
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    k = max(1, min(folds, len(names)))
    return {names[int(j)]: i % k for i, j in enumerate(order)}


def cross_group_scores(
    features: Tensor, recordings: np.ndarray, groups: list[str], folds: int, seed: int
) -> np.ndarray:
    """The score of every training window under a Gaussian fitted without its fold of groups.

    Args:
        features: ``(n, d)`` embeddings of the healthy training windows.
        recordings: ``(n,)`` recording index of each window.
        groups: group of every recording index (a recording without one is its own group).
        folds: number of folds of groups.
        seed: seed of the assignment of groups to folds.

    Raises:
        ValueError: fewer than two groups (nothing to hold out).
    """
    window_groups = [groups[int(r)] for r in recordings]
    fold_of = group_folds(window_groups, folds, seed)
    if len(set(fold_of.values())) < 2:
        raise ValueError(
            "cross-group calibration needs healthy training recordings of at least two groups; "
            "use calibration: holdout"
        )
    fold = np.array([fold_of[g] for g in window_groups])
    scores = np.empty(len(fold))
    score = GaussianScore(features.shape[1]).double()
    for k in sorted(set(fold.tolist())):
        held = torch.from_numpy(fold == k)
        score.fit(features[~held])
        with torch.no_grad():
            scores[held.numpy()] = score(features[held].double()).double().numpy()
    return scores
