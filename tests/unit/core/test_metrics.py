import itertools
import math

import numpy as np
import pytest

from lmforge.core.metrics import (
    classification_metrics,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
    per_class_recall,
)
from lmforge.errors import UserError


def test_metrics_against_a_hand_count():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == 3 / 5
    # F1 per class: 0 -> 2*1/(2+2)=0.5; 1 -> 2*2/(3+2)=0.8; 2 -> 0
    assert abs(m["macro_f1"] - (0.5 + 0.8 + 0.0) / 3) < 1e-12
    # recall per class: 1/2, 2/2, 0/1
    assert per_class_recall(np.array(m["confusion"])) == [0.5, 1.0, 0.0]
    assert m["balanced_accuracy"] == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_equals_scikit_learn_and_skips_labels_without_gold_examples():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.choice(4, size=30, p=[0.7, 0.2, 0.1, 0.0])  # label 3 never gold, sometimes predicted
        y_pred = rng.integers(0, 4, size=30)
        ours = classification_metrics(y_true, y_pred, 4)["balanced_accuracy"]
        assert ours == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert per_class_recall(np.array([[1, 0], [0, 0]])) == [1.0, None]


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of all k-subsets of n samples (the first c correct) that hold a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_over_all_k_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases_and_closed_forms():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0  # no correct sample
    assert pass_at_k(10, 10, 1) == 1.0  # all correct
    assert pass_at_k(10, 3, 8) == 1.0  # n - c = 7 < k: every 8-subset holds a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share correct
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10))
    assert pass_at_k(1000, 1, 100) == pytest.approx(0.1)  # large n: no overflow


@pytest.mark.parametrize(
    "n, c, k, message",
    [(5, 1, 10, "at least 10 samples"), (5, 6, 1, "0 <= correct <= samples"), (5, 1, 0, "k >= 1")],
)
def test_pass_at_k_rejects_undefined_input(n, c, k, message):
    with pytest.raises(UserError, match=message):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_problems():
    assert mean_pass_at_k([(4, 0), (4, 4), (4, 1)], 1) == pytest.approx((0 + 1 + 0.25) / 3)
    assert mean_pass_at_k(iter([(4, 1), (4, 2)]), 2) == pytest.approx((0.5 + 5 / 6) / 2)
    with pytest.raises(UserError, match="no problems"):
        mean_pass_at_k([], 1)


def test_majority_vote_ignores_none_and_breaks_ties_by_first_seen():
    assert majority_vote(["3", "5", "5", None, None, None]) == "5"  # None does not vote
    assert majority_vote(["7", "3", "3", "7"]) == "7"  # tie: the first seen wins
    assert majority_vote(["3", "7", "7", "3"]) == "3"
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote([None, "1"]) == "1"
