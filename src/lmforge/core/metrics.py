"""Metrics.

- Classification: accuracy, macro-F1, balanced accuracy (the mean of the per-class recalls, the metric
  of long-tailed classification, e.g. CReST, Wei et al. 2021, section 5), confusion matrix (rows: true
  label, columns: predicted).
- Generation: the unbiased pass@k estimator of Chen et al. 2021 ("Evaluating Large Language Models
  Trained on Code", section 2.1 and its figure 3), and the majority vote of self-consistency
  (Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning in Language Models").
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import numpy as np

from lmforge.errors import UserError

A = TypeVar("A", bound=Hashable)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the labels present in the gold data or the predictions."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    present = (predicted + actual) > 0
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def per_class_recall(matrix: np.ndarray) -> list[float | None]:
    """Recall of each label (None for a label with no gold example)."""
    matrix = np.asarray(matrix)
    actual = matrix.sum(axis=1)
    return [float(matrix[c, c] / actual[c]) if actual[c] else None for c in range(len(matrix))]


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean recall over the labels present in the gold data (scikit-learn's balanced_accuracy_score)."""
    recalls = [r for r in per_class_recall(matrix) if r is not None]
    return float(np.mean(recalls)) if recalls else 0.0


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> dict:
    matrix = confusion_matrix(y_true, y_pred, n_labels)
    return {
        "accuracy": float(np.trace(matrix) / max(1, matrix.sum())),
        "macro_f1": macro_f1(matrix),
        "balanced_accuracy": balanced_accuracy(matrix),
        "confusion": matrix.tolist(),
    }


# ---- generation -------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples of which c are correct (Chen et al. 2021, eq. 1).

    pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn without replacement from the n
    contain at least one correct one. Computed as the paper's numerically stable product
    1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the huge binomials. When n - c < k every
    k-subset holds a correct sample and the value is exactly 1.

    k > n has no unbiased estimate (there are no k-subsets of n samples): that is a UserError, as is
    c outside 0..n or k < 1.
    """
    if k < 1:
        raise UserError(f"pass@k needs k >= 1, got k={k}")
    if not 0 <= c <= n:
        raise UserError(f"pass@k needs 0 <= correct <= samples, got correct={c}, samples={n}")
    if k > n:
        raise UserError(f"pass@{k} needs at least {k} samples per problem, got {n}; sample more or lower k")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(per_problem_counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems, each given as (samples n, correct c); the number a benchmark reports."""
    values = [pass_at_k(n, c, k) for n, c in per_problem_counts]
    if not values:
        raise UserError(f"pass@{k} of no problems: there is nothing to average")
    return float(np.mean(values))


def majority_vote(answers: Sequence[A | None]) -> A | None:
    """The most frequent answer (self-consistency, Wang et al. 2023); None when no answer was extracted.

    None entries (completions with no extractable answer) do not vote. A tie goes to the answer seen
    first, so the result depends only on the order of the samples, never on hashing. Answers must
    already be normalised (GSM8K: `gsm8k.extract_answer` gives "18" for "18.00" and "$18").
    """
    counts: dict[A, int] = {}  # dicts keep insertion order: first seen comes first
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(answer for answer, count in counts.items() if count == best)
