"""Choosing one of N sampled solutions: Best-of-k, majority vote at k, and the verifier's preference pairs.

V-STaR (Hosseini et al., "V-STaR: Training Verifiers for Self-Taught Reasoners", COLM 2024, arXiv 2402.06457)
samples N candidate solutions per problem, scores each with a DPO-trained verifier and answers with the top one.
Its accuracy as a function of the number of candidates k is the paper's Best-of-k estimator: with the N candidates
sorted by verifier score, highest first, and alpha_i the correctness of the i-th,

    Best-of-k = (1 / C(N, k)) * sum_{i=0}^{N-k} C(N-i-1, k-1) * alpha_i

the expected correctness of the top-scored candidate among k drawn without replacement from the N
(C(N-i-1, k-1) of the C(N, k) subsets have candidate i as their best). The paper's formula assumes distinct
scores; `best_of_k` states the tie rule and computes it exactly (see its docstring). `majority_vote_at_k` is
the self-consistency baseline at the same k, and `preference_pairs` builds the verifier's DPO training pairs.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction
from itertools import combinations
from typing import Any, Protocol

import numpy as np

from lmforge.core.report import line_chart_svg

__all__ = [
    "best_of_k",
    "best_of_k_chart_svg",
    "best_of_k_curve",
    "majority_vote_at_k",
    "majority_vote_curve",
    "preference_pairs",
]

MAX_EXACT_SUBSETS = 20_000  # majority vote enumerates every k-subset up to this many, else samples
MC_DRAWS = 20_000  # Monte-Carlo k-subsets otherwise: standard error <= 0.5 / sqrt(20000) ~ 0.0035


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N] = [1, {n}], got {k}")


def best_of_k(scores: Sequence[float], correct: Sequence[bool], k: int) -> float:
    """Expected correctness of the top-scored of k candidates drawn without replacement from the N.

    Ties: when several candidates of the drawn k share the top score, one of them is picked uniformly, which is
    the same as averaging the paper's formula over every order of the tied candidates. Group the candidates by
    score, best group first; group g has m_g members, c_g of them correct, and B_g candidates score at or below
    it. A k-subset's best group is g when it lies within those B_g and meets group g:
    P(g) = (C(B_g, k) - C(B_g - m_g, k)) / C(N, k). Given that, the members of g in the subset are a uniform
    random subset of g, so a uniform pick among them is a uniform member of g: correct with probability c_g / m_g.
    Hence Best-of-k = sum_g P(g) * c_g / m_g, which with no ties (m_g = 1) is the paper's formula term by term.
    Computed in exact integer arithmetic (C(N, k) from `math.comb`, the smaller binomials by the exact recurrence
    C(b - 1, k) = C(b, k) * (b - k) / b) with one rounding at the end, so N = 1024 neither overflows nor loses
    precision.
    """
    n = len(scores)
    if len(correct) != n:
        raise ValueError(f"{n} scores but {len(correct)} correctness labels")
    _check_k(k, n)
    if any(math.isnan(float(s)) for s in scores):
        raise ValueError("a score is NaN: candidates cannot be ranked")
    groups: dict[float, list[int]] = {}  # score -> [members, correct members]
    for s, ok in zip(scores, correct):
        g = groups.setdefault(float(s), [0, 0])
        g[0] += 1
        g[1] += bool(ok)
    scale = math.lcm(*(size for size, n_ok in groups.values() if n_ok))  # makes every c_g / m_g an integer
    total, at_or_below, subsets = 0, n, math.comb(n, k)  # subsets = C(at_or_below, k)
    for score in sorted(groups, reverse=True):
        size, n_ok = groups[score]
        if at_or_below < k:  # no k-subset has its best this low
            break
        below = subsets
        for b in range(at_or_below, at_or_below - size, -1):
            below = below * (b - k) // b  # C(b - 1, k) = C(b, k) * (b - k) / b, exactly
        if n_ok:
            total += (subsets - below) * n_ok * (scale // size)
        at_or_below, subsets = at_or_below - size, below
    return total / (scale * math.comb(n, k))  # int / int: exact up to the final rounding


def best_of_k_curve(problems: Sequence[tuple[Sequence[float], Sequence[bool]]], ks: Iterable[int]) -> dict[int, float]:
    """Mean Best-of-k over problems, for each k; problems are (scores, correct) pairs."""
    if not problems:
        raise ValueError("no problems")
    return {k: sum(best_of_k(s, c, k) for s, c in problems) / len(problems) for k in ks}


def _vote_value(answers: Iterable[str | None], gold: str) -> Fraction:
    """Correctness of the majority answer of one draw, ties among top answers broken uniformly; None never wins."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return Fraction(0)
    top = max(counts.values())
    winners = [a for a, c in counts.items() if c == top]
    return Fraction(1, len(winners)) if gold in winners else Fraction(0)


def majority_vote_at_k(
    answers: Sequence[str | None],
    gold: str,
    k: int,
    *,
    max_exact: int = MAX_EXACT_SUBSETS,
    draws: int = MC_DRAWS,
    seed: int = 0,
) -> float:
    """Expected self-consistency accuracy with k of the N samples drawn without replacement.

    Each draw answers with its most frequent answer; None (no answer extracted) never wins, a draw of only
    None answers scores 0, and a tie among the top answers is broken uniformly (the gold answer then scores
    1 / number of tied answers). When C(N, k) <= `max_exact` (20,000) every k-subset is enumerated and the
    result is exact. Otherwise it is an unbiased Monte-Carlo estimate over `draws` (20,000) uniform k-subsets
    from numpy's PCG64 generator seeded with `seed`, standard error at most 0.5 / sqrt(draws) ~ 0.0035.
    """
    n = len(answers)
    _check_k(k, n)
    if math.comb(n, k) <= max_exact:
        total = sum((_vote_value((answers[i] for i in idx), gold) for idx in combinations(range(n), k)), Fraction(0))
        return float(total / math.comb(n, k))
    vocab = sorted({a for a in answers if a is not None})
    if gold not in vocab:
        return 0.0
    code = {a: i for i, a in enumerate(vocab)}
    v = len(vocab) + 1  # the last column counts None and is ignored
    codes = np.array([code[a] if a is not None else v - 1 for a in answers])
    rng, total, done = np.random.default_rng(seed), 0.0, 0
    while done < draws:
        b = min(1024, draws - done)
        picked = np.argpartition(rng.random((b, n)), k - 1, axis=1)[:, :k]  # k smallest keys: a uniform k-subset
        flat = (codes[picked] + v * np.arange(b)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * v).reshape(b, v)[:, :-1]
        top = counts.max(axis=1)
        n_top = (counts == top[:, None]).sum(axis=1)
        hit = (counts[:, code[gold]] == top) & (top > 0)
        total += float(np.where(hit, 1.0 / n_top, 0.0).sum())
        done += b
    return total / draws


def majority_vote_curve(
    problems: Sequence[tuple[Sequence[str | None], str]], ks: Iterable[int], **options: Any
) -> dict[int, float]:
    """Mean `majority_vote_at_k` over problems, for each k; problems are (answers, gold) pairs."""
    if not problems:
        raise ValueError("no problems")
    return {k: sum(majority_vote_at_k(a, g, k, **options) for a, g in problems) / len(problems) for k in ks}


class Sample(Protocol):
    problem_id: Any
    completion: str
    passed: bool


def preference_pairs(samples: Iterable[Sample], max_pairs_per_problem: int, seed: int) -> list[tuple[Any, str, str]]:
    """The verifier's DPO pairs (problem_id, chosen = a correct completion, rejected = an incorrect one).

    The paper's rule (section 3): per problem, every unique correct completion is paired with every unique
    incorrect one (Cartesian product; exact duplicate texts count once; a text seen both passing and failing
    stays on both sides, but is never paired with itself). `max_pairs_per_problem` 0 keeps them all. A cap
    above 0 is this project's option for large buffers: a problem with more than that many pairs keeps a
    uniform sample of that many, drawn without replacement with `random.Random(f"{seed}:{problem_id}")`, so a
    problem's pairs do not depend on the other problems or on their order. Output order: problems in
    first-seen order, and within a problem the product order (correct completions in first-seen order, then
    incorrect ones), kept for the sampled pairs.
    """
    if max_pairs_per_problem < 0:
        raise ValueError(f"max_pairs_per_problem must be >= 0 (0 = every pair), got {max_pairs_per_problem}")
    by_problem: dict[Any, tuple[dict[str, None], dict[str, None]]] = {}  # dicts as insertion-ordered sets
    for s in samples:
        good, bad = by_problem.setdefault(s.problem_id, ({}, {}))
        (good if s.passed else bad)[s.completion] = None
    out: list[tuple[Any, str, str]] = []
    for pid, (good, bad) in by_problem.items():
        pairs = [(c, r) for c in good for r in bad if c != r]
        if 0 < max_pairs_per_problem < len(pairs):
            keep = random.Random(f"{seed}:{pid}").sample(range(len(pairs)), max_pairs_per_problem)
            pairs = [pairs[i] for i in sorted(keep)]
        out.extend((pid, c, r) for c, r in pairs)
    return out


def best_of_k_chart_svg(curves: dict[str, dict[int, float]], title: str = "Best-of-k") -> str:
    """Inline SVG of Best-of-k accuracy (%) against k, one line per verifier (or baseline), as in the paper's Fig. 4
    (k on a log2 axis, as there; accuracy from 0, so a one-problem difference looks as small as it is)."""
    series = {name: [(float(k), 100.0 * acc) for k, acc in sorted(curve.items())] for name, curve in curves.items()}
    return line_chart_svg(series, title, "k (candidates per problem)", "accuracy (%)", log2_x=True, y_from_zero=True)
