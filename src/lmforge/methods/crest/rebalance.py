"""CReST's class-rebalancing selection of pseudo-labels, and CReST+'s progressive distribution alignment.

Wei, Sohn, Mellina, Yuille, Yang, "CReST: A Class-Rebalancing Self-Training Framework for Imbalanced
Semi-Supervised Learning", CVPR 2021 (arXiv 2102.09559).

Selection (section 3.2): with the classes ranked by their labeled count, N_1 >= N_2 >= ... >= N_L, the
unlabeled samples the model predicts as the class of rank l join the labeled set of the next generation
in the proportion

    mu_l = (N_{L+1-l} / N_1) ** alpha,

the most confident first: the rarest class keeps all its predictions (mu_L = 1), the most frequent the
fewest (mu_1 = (N_L / N_1) ** alpha). alpha is the exponent itself; the paper's experiments use 1/3.
The official code's flag `alpha=3` and USB's `crest_alpha=3` mean the same exponent 1/3 (they raise to
1 / alpha), and both index the rates by class id, assuming class 0 is the most frequent (CIFAR-LT's
order); here the rank comes from the counts, whatever the class ids. Classes with equal counts are ranked
by class index (the formula needs a strict order; the rarest-ranked of them gets the higher rate).

Progressive distribution alignment (CReST+, section 3.3): each unlabeled prediction p is rescaled as in
ReMixMatch (Berthelot et al. 2020),

    p~ = normalize(p * target / running),   target = normalize(labeled class distribution ** t_g),

where running is the moving average of the model's predictions on unlabeled data and t_g falls linearly
from 1 at the first generation to t_min (0.5) at the last: t_g = 1 - (1 - t_min) * g / (G - 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lmforge.errors import UserError


def class_ranks(labeled_counts: Sequence[int]) -> list[int]:
    """The rank (0 = most frequent) of each class, from its labeled count; ties go to the lower class index."""
    order = sorted(range(len(labeled_counts)), key=lambda c: (-labeled_counts[c], c))
    ranks = [0] * len(labeled_counts)
    for rank, c in enumerate(order):
        ranks[c] = rank
    return ranks


def selection_rates(labeled_counts: Sequence[int], alpha: float) -> np.ndarray:
    """mu per class id (L,): the fraction of that class's predictions added to the labeled set (eq. 2)."""
    if any(n <= 0 for n in labeled_counts):
        raise UserError(f"crest: every class needs at least one labeled example, got counts {list(labeled_counts)}")
    if alpha < 0:
        raise UserError(f"crest.alpha must be >= 0 (the exponent; the paper uses 1/3), got {alpha}")
    by_rank = sorted(labeled_counts, reverse=True)  # N_1 >= ... >= N_L
    n_classes = len(by_rank)
    rates = np.empty(n_classes)
    for c, rank in enumerate(class_ranks(labeled_counts)):
        mirrored = by_rank[n_classes - 1 - rank]  # N_{L+1-l}, with l = rank + 1
        rates[c] = (mirrored / by_rank[0]) ** alpha
    return rates


def select_pseudo_labels(predicted: np.ndarray, confidence: np.ndarray, rates: np.ndarray) -> list[tuple[int, int]]:
    """(unlabeled index, predicted class) of the samples that join the labeled set.

    predicted, confidence (N,): the model's class (argmax) and its probability on each unlabeled sample.
    For each class, the samples predicted as it are sorted by confidence (highest first, ties by index)
    and the first floor(count * mu) are kept, as the official code and USB do.
    """
    chosen = []
    for c, rate in enumerate(rates):
        members = np.flatnonzero(predicted == c)
        ranked = members[np.lexsort((members, -confidence[members]))]
        keep = math.floor(len(members) * rate)
        chosen += [(int(i), c) for i in ranked[:keep]]
    return sorted(chosen)


def alignment_temperature(generation: int, generations: int, t_min: float = 0.5) -> float:
    """t_g for generation g of G (0-based): 1 at the first, t_min at the last, linear between."""
    if not 0 <= generation < generations:
        raise ValueError(f"generation {generation} outside 0..{generations - 1}")
    if generations == 1:
        return 1.0
    share = generation / (generations - 1)
    return (1 - share) * 1.0 + share * t_min


def alignment_target(labeled_counts: Sequence[int], temperature: float) -> torch.Tensor:
    """normalize(labeled class distribution ** t): (L,), the distribution pseudo-labels are pulled toward."""
    dist = torch.tensor(labeled_counts, dtype=torch.float64)
    dist = (dist / dist.sum()) ** temperature
    return (dist / dist.sum()).float()


def align(probs: torch.Tensor, target: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
    """probs (B, L) rescaled by target / running (each (L,)) and renormalised per row."""
    scaled = probs * (target / running)
    return scaled / scaled.sum(dim=1, keepdim=True)


class RunningDistribution:
    """The moving average of the model's predicted class distribution on unlabeled batches.

    The first batch's mean prediction starts it; each later batch moves it by (1 - momentum) toward that
    batch's mean (USB's DistAlignEMAHook, momentum 0.999; ReMixMatch averaged the last 128 batches). Its
    state is one tensor, saved with every checkpoint so that a resumed run aligns as an uninterrupted one.
    """

    def __init__(self, n_classes: int, momentum: float = 0.999):
        self.n_classes, self.momentum = n_classes, momentum
        self.value: torch.Tensor | None = None  # (L,) once a batch was seen

    def update(self, probs: torch.Tensor) -> torch.Tensor:
        batch_mean = probs.detach().float().mean(dim=0).cpu()
        if self.value is None:
            self.value = batch_mean
        else:
            self.value = self.momentum * self.value + (1 - self.momentum) * batch_mean
        return self.value

    def state_dict(self) -> dict:
        return {"running_distribution": None if self.value is None else self.value.tolist()}

    def load_state_dict(self, state: dict) -> None:
        value = state["running_distribution"]
        if value is not None and len(value) != self.n_classes:
            raise ValueError(f"running_distribution has {len(value)} classes, this run {self.n_classes}")
        self.value = None if value is None else torch.tensor(value, dtype=torch.float32)
