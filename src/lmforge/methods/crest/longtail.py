"""Long-tailed labeled and unlabeled sets from a labeled dataset, reproducible by seed.

The profile is the exponential one of Cui et al. (CVPR 2019) that CReST (Wei et al., CVPR 2021, section
5.1) uses for CIFAR-10-LT: the class of rank l (0-based, most frequent first) gets
N_l = floor(N_max * gamma ** (-l / (L - 1))) examples, so gamma = N_max / N_min. CReST draws the labeled set
L and the unlabeled set U with the same gamma, U from the labels hidden: with a labeled fraction beta,
class l has T_l = floor(T_max * gamma ** (-l / (L - 1))) examples in all, round(beta * T_l) (at least 1) of
them labeled and the rest unlabeled. T_max is the largest that every class can fill (or a given cap).

Which class is the head: the classes ranked by how many examples the dataset has of each (most first, ties
by name), so the head is the class the data can best afford; the order is recorded with the split.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from lmforge.errors import UserError


def long_tail_counts(n_max: int, n_classes: int, gamma: float) -> list[int]:
    """N_l for l = 0 .. L-1 (most frequent first)."""
    if gamma < 1:
        raise UserError(f"crest: the imbalance ratio gamma must be >= 1 (N_max / N_min), got {gamma}")
    if n_classes < 2:
        raise UserError(f"crest: a long tail needs at least 2 classes, got {n_classes}")
    return [math.floor(n_max * gamma ** (-rank / (n_classes - 1))) for rank in range(n_classes)]


@dataclass
class LongTailSplit:
    labeled: list[int]
    """indices into the dataset, sorted"""
    unlabeled: list[int]
    """indices into the dataset, sorted; their labels are hidden from training"""
    class_order: list[str]
    """the classes from head to tail"""
    labeled_counts: dict[str, int]
    unlabeled_counts: dict[str, int]
    settings: dict = field(default_factory=dict)

    def manifest(self) -> dict:
        return {
            **self.settings,
            "class_order": self.class_order,
            "labeled_counts": self.labeled_counts,
            "unlabeled_counts": self.unlabeled_counts,
        }


def long_tail_split(
    labels: list[str], gamma: float, labeled_fraction: float, seed: int, max_per_class: int | None = None
) -> LongTailSplit:
    """Draw L and U from the examples of `labels` (one label per example) by the profile above."""
    if not 0 < labeled_fraction < 1:
        raise UserError(f"crest: the labeled fraction must be between 0 and 1, got {labeled_fraction}")
    available = Counter(labels)
    class_order = sorted(available, key=lambda c: (-available[c], c))
    n_classes = len(class_order)
    profile = long_tail_counts(1_000_000, n_classes, gamma)  # shape only: scaled to the data below
    shares = [n / profile[0] for n in profile]
    t_max = min(math.floor(available[c] / share) for c, share in zip(class_order, shares))
    if max_per_class is not None:
        t_max = min(t_max, max_per_class)
    totals = long_tail_counts(t_max, n_classes, gamma)
    if totals[-1] < 2:
        raise UserError(
            f"crest: gamma {gamma:g} leaves the rarest class ({class_order[-1]!r}) {totals[-1]} example(s) "
            f"of {available[class_order[-1]]}: it needs 2 (one labeled, one unlabeled); lower gamma"
        )
    rng = random.Random(seed)
    labeled, unlabeled = [], []
    labeled_counts, unlabeled_counts = {}, {}
    for c, total in zip(class_order, totals):
        members = [i for i, label in enumerate(labels) if label == c]
        rng.shuffle(members)
        n_labeled = min(total - 1, max(1, round(labeled_fraction * total)))
        labeled += members[:n_labeled]
        unlabeled += members[n_labeled:total]
        labeled_counts[c], unlabeled_counts[c] = n_labeled, total - n_labeled
    settings = {"gamma": gamma, "labeled_fraction": labeled_fraction, "seed": seed, "max_per_class": max_per_class}
    return LongTailSplit(sorted(labeled), sorted(unlabeled), class_order, labeled_counts, unlabeled_counts, settings)
