"""CReST's selection rates and pseudo-label choice, CReST+'s alignment, and the long-tailed splits:
against hand-computed values and against the official code's own formula."""

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from lmforge.errors import UserError
from lmforge.methods.crest.longtail import long_tail_counts, long_tail_split
from lmforge.methods.crest.rebalance import (
    RunningDistribution,
    align,
    alignment_target,
    alignment_temperature,
    select_pseudo_labels,
    selection_rates,
)


def test_imbalance_100_over_10_classes_keeps_a_fifth_of_the_head_and_all_of_the_tail():
    counts = long_tail_counts(500, 10, 100)  # 500 ... 5
    rates = selection_rates(counts, alpha=1 / 3)
    assert rates[0] == pytest.approx(0.2154, abs=1e-4)  # (5 / 500) ** (1/3)
    assert rates[-1] == 1.0
    assert all(a <= b for a, b in zip(rates, rates[1:]))  # rarer classes keep more


def test_rates_equal_the_official_codes_formula_on_its_class_order():
    """The official code (and USB) computes mu = (1/gamma) ** (1/(L-1)), then for class id c (class 0 the most
    frequent) the rate (mu ** (L - 1 - c)) ** (1 / alpha_flag) with alpha_flag = 3: the same numbers."""
    n_classes, gamma = 10, 100
    counts = [500 * gamma ** (-c / (n_classes - 1)) for c in range(n_classes)]  # exact profile, class 0 the head
    mu = (1 / gamma) ** (1 / (n_classes - 1))
    official = [(mu ** (n_classes - 1 - c)) ** (1 / 3) for c in range(n_classes)]
    np.testing.assert_allclose(selection_rates(counts, alpha=1 / 3), official, rtol=1e-12)


def test_rates_follow_the_counts_not_the_class_ids():
    counts = [5, 500, 50]  # class 1 is the head, class 0 the tail
    rates = selection_rates(counts, alpha=1.0)
    assert rates.tolist() == pytest.approx([1.0, 5 / 500, 50 / 500])


def test_bad_counts_and_alpha_are_refused():
    with pytest.raises(UserError, match="at least one labeled example"):
        selection_rates([10, 0, 3], alpha=1 / 3)
    with pytest.raises(UserError, match="crest.alpha must be >= 0"):
        selection_rates([10, 3], alpha=-1)


def test_the_most_confident_fraction_of_each_predicted_class_is_chosen():
    probs = np.array(
        [
            [0.9, 0.1],  # 0: class 0, conf 0.9
            [0.6, 0.4],  # 1: class 0, conf 0.6
            [0.8, 0.2],  # 2: class 0, conf 0.8
            [0.7, 0.3],  # 3: class 0, conf 0.7
            [0.3, 0.7],  # 4: class 1, conf 0.7
            [0.45, 0.55],  # 5: class 1, conf 0.55
        ]
    )
    # class 0: floor(4 * 0.5) = 2 -> samples 0 and 2; class 1: floor(2 * 1.0) = 2 -> samples 4 and 5
    predicted, confidence = probs.argmax(1), probs.max(1)
    assert select_pseudo_labels(predicted, confidence, np.array([0.5, 1.0])) == [(0, 0), (2, 0), (4, 1), (5, 1)]
    # floor, not round: 4 * 0.74 = 2.96 keeps 2
    assert [i for i, _ in select_pseudo_labels(predicted, confidence, np.array([0.74, 0.0]))] == [0, 2]


def test_alignment_temperature_falls_linearly_to_its_floor():
    assert [alignment_temperature(g, 6) for g in range(6)] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    assert alignment_temperature(0, 1) == 1.0
    with pytest.raises(ValueError):
        alignment_temperature(6, 6)


def test_alignment_against_hand_computed_values():
    # labeled counts 80 / 20: distribution (0.8, 0.2); at t = 0.5: sqrt -> (0.8944, 0.4472) / 1.3416 = (2/3, 1/3)
    target = alignment_target([80, 20], 0.5)
    assert target.tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    running = torch.tensor([0.9, 0.1])
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    # row 0: (0.5 * (2/3) / 0.9, 0.5 * (1/3) / 0.1) = (0.3704, 1.6667) -> (0.1818, 0.8182)
    # row 1: (0.9 * 0.7407, 0.1 * 3.3333) = (0.6667, 0.3333) -> (0.6667, 0.3333)
    aligned = align(probs, target, running)
    assert aligned.flatten().tolist() == pytest.approx([2 / 11, 9 / 11, 2 / 3, 1 / 3], abs=1e-6)
    assert alignment_target([80, 20], 1.0).tolist() == pytest.approx([0.8, 0.2])


def test_the_running_distribution_starts_at_the_first_batch_and_moves_toward_the_next():
    running = RunningDistribution(2, momentum=0.5)
    assert running.value is None
    running.update(torch.tensor([[1.0, 0.0], [0.8, 0.2]]))  # first batch: its mean (0.9, 0.1), as USB's hook
    assert running.value.tolist() == pytest.approx([0.9, 0.1])
    running.update(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))  # 0.5 * (0.9, 0.1) + 0.5 * (0.5, 0.5)
    assert running.value.tolist() == pytest.approx([0.7, 0.3])
    restored = RunningDistribution(2, momentum=0.5)
    restored.load_state_dict(running.state_dict())
    assert restored.value.tolist() == pytest.approx([0.7, 0.3])
    with pytest.raises(ValueError, match="3 classes"):
        restored.load_state_dict({"running_distribution": [0.2, 0.3, 0.5]})


def test_long_tail_counts_follow_the_exponential_profile():
    assert long_tail_counts(100, 3, 100) == [100, 10, 1]
    counts = long_tail_counts(1000, 10, 10)
    assert counts[0] == 1000 and counts[-1] == 100
    assert counts == [math.floor(1000 * 10 ** (-r / 9)) for r in range(10)]
    with pytest.raises(UserError, match="gamma must be >= 1"):
        long_tail_counts(100, 3, 0.5)


def test_a_long_tailed_split_is_disjoint_reproducible_and_follows_gamma():
    rng = random.Random(0)
    labels = [rng.choice("abcd") for _ in range(4000)]
    split = long_tail_split(labels, gamma=10, labeled_fraction=0.1, seed=3)
    assert not set(split.labeled) & set(split.unlabeled)
    assert split == long_tail_split(labels, gamma=10, labeled_fraction=0.1, seed=3)
    assert split.labeled != long_tail_split(labels, gamma=10, labeled_fraction=0.1, seed=4).labeled
    totals = [split.labeled_counts[c] + split.unlabeled_counts[c] for c in split.class_order]
    assert totals[0] / totals[-1] == pytest.approx(10, rel=0.02)
    assert Counter(labels[i] for i in split.labeled) == split.labeled_counts
    head = split.class_order[0]
    assert split.labeled_counts[head] == round(0.1 * totals[0])
    assert split.class_order[0] == Counter(labels).most_common(1)[0][0]  # the head is the most available class
    assert split.manifest()["gamma"] == 10 and split.manifest()["seed"] == 3


def test_a_gamma_the_data_cannot_afford_is_refused():
    labels = ["a"] * 50 + ["b"] * 50
    with pytest.raises(UserError, match="rarest class \\('b'\\) 1 example"):
        long_tail_split(labels, gamma=50, labeled_fraction=0.1, seed=0)
    with pytest.raises(UserError, match="labeled fraction"):
        long_tail_split(labels, gamma=2, labeled_fraction=1.0, seed=0)
