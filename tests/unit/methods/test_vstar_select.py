import math
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations, permutations, product

import pytest

from lmforge.methods.vstar.select import (
    best_of_k,
    best_of_k_chart_svg,
    best_of_k_curve,
    majority_vote_at_k,
    majority_vote_curve,
    preference_pairs,
)


def brute_best_of_k(scores, correct, k):
    """Average over all k-subsets of the mean correctness of the subset's top-scored candidates."""
    total = Fraction(0)
    subsets = list(combinations(range(len(scores)), k))
    for sub in subsets:
        top = max(scores[i] for i in sub)
        tied = [i for i in sub if scores[i] == top]
        total += Fraction(sum(bool(correct[i]) for i in tied), len(tied))
    return total / len(subsets)


def paper_formula(alpha, k):
    """The paper's estimator for candidates already sorted by score, best first."""
    n = len(alpha)
    return Fraction(sum(math.comb(n - i - 1, k - 1) * a for i, a in enumerate(alpha[: n - k + 1])), math.comb(n, k))


def random_case(rng, n, tied):
    scores = [rng.choice([0, 1, 2]) if tied else rng.random() for _ in range(n)]
    correct = [rng.random() < 0.5 for _ in range(n)]
    return scores, correct


@pytest.mark.parametrize("tied", [True, False])
def test_best_of_k_equals_enumeration_of_all_subsets(tied):
    rng = random.Random(0 if tied else 1)
    for _ in range(60):
        n = rng.randint(1, 8)
        scores, correct = random_case(rng, n, tied)
        for k in range(1, n + 1):
            assert best_of_k(scores, correct, k) == pytest.approx(float(brute_best_of_k(scores, correct, k)), abs=1e-12)


def test_ties_equal_the_papers_formula_averaged_over_orders_of_tied_candidates():
    rng = random.Random(2)
    for _ in range(25):
        n = rng.randint(2, 6)
        scores, correct = random_case(rng, n, tied=True)
        levels = sorted(set(scores), reverse=True)
        groups = [[c for s, c in zip(scores, correct) if s == lv] for lv in levels]
        orders = [sum(p, []) for p in product(*(list(map(list, permutations(g))) for g in groups))]
        for k in range(1, n + 1):
            mean = sum(paper_formula(o, k) for o in orders) / len(orders)
            assert best_of_k(scores, correct, k) == pytest.approx(float(mean), abs=1e-12)


def test_best_of_k_without_ties_is_the_papers_formula():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3]
    correct = [False, True, True, False, True]
    alpha = [c for _, c in sorted(zip(scores, correct), reverse=True)]
    for k in range(1, 6):
        assert best_of_k(scores, correct, k) == pytest.approx(float(paper_formula(alpha, k)), abs=1e-15)


def test_known_values():
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(1, 12)
        scores, correct = random_case(rng, n, tied=rng.random() < 0.5)
        assert best_of_k(scores, correct, 1) == pytest.approx(sum(correct) / n, abs=1e-15)
        top = [c for s, c in zip(scores, correct) if s == max(scores)]
        assert best_of_k(scores, correct, n) == pytest.approx(sum(top) / len(top), abs=1e-15)
        assert best_of_k(scores, [True] * n, rng.randint(1, n)) == 1.0
    # all tied: every k gives the mean correctness
    assert best_of_k([1.0] * 4, [True, False, False, False], 3) == pytest.approx(0.25)


def test_large_n_with_perfectly_informative_scores_is_pass_at_k():
    rng = random.Random(4)
    n, n_ok = 512, 40
    correct = [i < n_ok for i in range(n)]
    rng.shuffle(correct)
    scores = [1.0 + rng.random() if ok else rng.random() for ok in correct]  # every correct one outscores the rest
    curve = [best_of_k(scores, correct, k) for k in range(1, n + 1)]
    assert all(0.0 <= v <= 1.0 for v in curve)
    assert all(a <= b for a, b in zip(curve, curve[1:]))
    for k in (1, 2, 16, 100, 473, 512):
        assert curve[k - 1] == pytest.approx(1 - math.comb(n - n_ok, k) / math.comb(n, k), abs=1e-12)


def test_n_1024_with_heavy_ties_does_not_overflow():
    rng = random.Random(5)
    scores = [rng.randint(0, 20) for _ in range(1024)]
    correct = [rng.random() < s / 20 for s in scores]
    for k in (1, 64, 512, 1000, 1024):
        v = best_of_k(scores, correct, k)
        assert 0.0 <= v <= 1.0 and math.isfinite(v)


def test_best_of_k_rejects_bad_input():
    with pytest.raises(ValueError):
        best_of_k([0.1, 0.2], [True, False], 0)
    with pytest.raises(ValueError):
        best_of_k([0.1, 0.2], [True, False], 3)
    with pytest.raises(ValueError):
        best_of_k([0.1, 0.2], [True], 1)
    with pytest.raises(ValueError):
        best_of_k([0.1, float("nan")], [True, False], 1)


def test_best_of_k_curve_is_the_mean_over_problems():
    problems = [([0.9, 0.1], [True, False]), ([0.2, 0.8, 0.5], [True, False, False])]
    curve = best_of_k_curve(problems, [1, 2])
    assert curve[1] == pytest.approx((0.5 + 1 / 3) / 2)
    assert curve[2] == pytest.approx((1.0 + 0.0) / 2)  # second problem: only the lowest-scored one is correct


def brute_vote(answers, gold, k):
    total, subsets = Fraction(0), list(combinations(range(len(answers)), k))
    for sub in subsets:
        counts = Counter(answers[i] for i in sub if answers[i] is not None)
        if not counts:
            continue
        winners = [a for a, c in counts.items() if c == max(counts.values())]
        total += Fraction(sum(w == gold for w in winners), len(winners))  # each tie-break choice equally likely
    return total / len(subsets)


def test_majority_vote_equals_enumeration_of_subsets_and_tie_breaks():
    rng = random.Random(6)
    for _ in range(60):
        n = rng.randint(1, 9)
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        for k in range(1, n + 1):
            assert majority_vote_at_k(answers, "1", k) == pytest.approx(float(brute_vote(answers, "1", k)), abs=1e-12)


def test_none_never_wins_the_vote():
    answers = [None, None, None, "7", "3"]
    # k = 5: "7" and "3" tie at one vote each; the three None answers do not count
    assert majority_vote_at_k(answers, "7", 5) == pytest.approx(0.5)
    assert majority_vote_at_k([None] * 4, "7", 2) == 0.0
    assert majority_vote_at_k([None] * 5 + ["7"], "7", 6, max_exact=0, draws=500) == 1.0


def test_monte_carlo_path_is_unbiased_and_seeded():
    rng = random.Random(7)
    answers = [rng.choice(["a", "b", "c", None]) for _ in range(14)]
    exact = float(brute_vote(answers, "a", 5))
    est = majority_vote_at_k(answers, "a", 5, max_exact=0, draws=20_000, seed=1)
    assert est == pytest.approx(exact, abs=4 * 0.5 / math.sqrt(20_000))
    assert majority_vote_at_k(answers, "a", 5, max_exact=0, seed=1) == majority_vote_at_k(
        answers, "a", 5, max_exact=0, seed=1
    )
    big = [rng.choice(["a", "b", None]) for _ in range(1024)]
    assert 0.0 <= majority_vote_at_k(big, "a", 512) <= 1.0  # C(1024, 512) subsets: sampled


def test_majority_vote_curve():
    problems = [(["x", "x", "y"], "x"), (["y", None, "y"], "x")]
    curve = majority_vote_curve(problems, [1, 3])
    assert curve[1] == pytest.approx((2 / 3 + 0) / 2)
    assert curve[3] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        majority_vote_at_k(["x"], "x", 2)


@dataclass
class S:
    problem_id: str
    completion: str
    passed: bool


def test_preference_pairs_product_and_dedup():
    samples = [S("p", "c1", True), S("p", "w1", False), S("p", "c1", True), S("p", "c2", True), S("p", "w2", False)]
    samples += [S("p", "w1", False), S("q", "only-right", True)]
    assert preference_pairs(samples, 100, seed=0) == [
        ("p", "c1", "w1"), ("p", "c1", "w2"), ("p", "c2", "w1"), ("p", "c2", "w2"),
    ]  # fmt: skip


def test_preference_pairs_cap_determinism_and_independence():
    def problem(pid, n_good, n_bad):
        return [S(pid, f"{pid}-ok{i}", True) for i in range(n_good)] + [
            S(pid, f"{pid}-bad{i}", False) for i in range(n_bad)
        ]

    a, b = problem("a", 6, 7), problem("b", 5, 5)
    pairs = preference_pairs(a + b, 10, seed=3)
    pa = [p for p in pairs if p[0] == "a"]
    assert len(pa) == 10 and len(set(pa)) == 10 and len(pairs) == 20
    assert all(c.startswith("a-ok") and r.startswith("a-bad") for _, c, r in pa)
    assert pairs == preference_pairs(a + b, 10, seed=3)
    # a problem's pairs do not depend on which other problems are present, nor on their order
    assert preference_pairs(a, 10, seed=3) == pa
    assert [p for p in preference_pairs(b + problem("z", 9, 9) + a, 10, seed=3) if p[0] == "a"] == pa
    assert preference_pairs(a, 10, seed=4) != pa
    # the sample is uniform: over many seeds every one of the 42 pairs is kept about 10/42 of the time
    counts = Counter(p for s in range(2000) for p in preference_pairs(a, 10, seed=s))
    assert len(counts) == 42 and all(abs(c / 2000 - 10 / 42) < 0.05 for c in counts.values())
    with pytest.raises(ValueError):
        preference_pairs(a, -1, seed=0)


def test_preference_pairs_without_a_cap_are_the_whole_cartesian_product():
    samples = [S("p", f"ok{i}", True) for i in range(6)] + [S("p", f"bad{i}", False) for i in range(7)]
    pairs = preference_pairs(samples, 0, seed=0)  # 0: the paper's rule, every correct x incorrect pair
    assert pairs == [("p", f"ok{i}", f"bad{j}") for i in range(6) for j in range(7)]
    assert preference_pairs(samples, 42, seed=0) == pairs  # a cap at the product's size keeps every pair
    assert len(preference_pairs(samples, 41, seed=0)) == 41


def test_a_text_seen_passing_and_failing_is_never_paired_with_itself():
    samples = [S("p", "x", True), S("p", "x", False), S("p", "y", False)]
    assert preference_pairs(samples, 10, seed=0) == [("p", "x", "y")]


def test_chart_is_an_svg_naming_each_verifier():
    curves = {"V-STaR verifier": {1: 0.3, 4: 0.45, 16: 0.5}, "majority vote": {1: 0.3, 4: 0.38, 16: 0.41}}
    svg = best_of_k_chart_svg(curves, "GSM8K Best-of-k")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert all(name in svg for name in curves) and "GSM8K Best-of-k" in svg and "polyline" in svg
