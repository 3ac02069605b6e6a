"""The metrics of a task stream, from its accuracy matrix.

After training on tasks 0..i of a stream of T tasks, every task's held-out split is scored:

    R[i][j] = score on task j after training on tasks 0..i        (i, j in 0..T-1)
    b[j]    = score on task j before any training on the stream   (the starting model)

Row i is the model after task i; the diagonal R[j][j] is each task just after its own training, the last row
R[T-1] the model at the end of the stream, the entries above the diagonal tasks not trained yet. Scores are
"higher is better" (accuracy, F1); a loss would flip the signs of the transfers.

From Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, the paper's
three evaluation metrics (their R_{i,j} and b_j, indices from 1 there, from 0 here):

    ACC = 1/T     sum_{j=0}^{T-1} R[T-1][j]                 average accuracy at the end of the stream
    BWT = 1/(T-1) sum_{j=0}^{T-2} (R[T-1][j] - R[j][j])     backward transfer (negative: forgetting)
    FWT = 1/(T-1) sum_{j=1}^{T-1} (R[j-1][j] - b[j])        forward transfer (zero-shot gain before training)

From Chaudhry, Dokania, Ajanthan, Torr, "Riemannian Walk for Incremental Learning: Understanding Forgetting
and Intransigence", ECCV 2018, the forgetting measure (their f_j^k and F_k, taken after the last task, k = T-1):

    f_j = max_{l in 0..T-2} R[l][j] - R[T-1][j]     for j in 0..T-2
    F   = 1/(T-1) sum_{j=0}^{T-2} f_j

Forgetting and BWT differ: BWT compares the end with the score just after the task's own training, R[j][j];
forgetting compares it with the best score the task ever had before the last step, which is at least
R[j][j]. So f_j >= R[j][j] - R[T-1][j] for every task and F >= -BWT, with equality exactly when every
task's best score (over steps 0..T-2) was the one right after its own training. A task that kept improving
while later tasks trained, then dropped, shows more forgetting than -BWT says.

The learning accuracy, LA = 1/T sum_j R[j][j], is each task's score just after its own training (the
"plasticity" side; Riemer et al. 2019 and the survey's Wu et al. 2024 report it beside ACC and BWT).

With one task (T = 1) there is no earlier task and no next one: BWT, FWT and forgetting are undefined and
returned as None, never a division by zero.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from lmforge.core.report import heatmap_html
from lmforge.errors import UserError

_WHAT = "continual metrics"


def _count(n: int) -> str:
    return f"{n} score" if n == 1 else f"{n} scores"


def _checked_score(value: Any, where: str) -> float:
    """One finite number, or a UserError naming the cell."""
    if value is None:
        raise UserError(f"{_WHAT}: {where} is missing (None); every task must be scored after every step")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{_WHAT}: {where} is not a number: {value!r}")
    score = float(value)
    if not math.isfinite(score):
        raise UserError(f"{_WHAT}: {where} is {score} (scores must be finite numbers)")
    return score


def _checked_matrix(R: Iterable[Iterable[float]]) -> list[list[float]]:
    """R as a T x T list of finite floats; anything else is a UserError saying what is wrong."""
    if R is None or isinstance(R, (str, bytes)) or not isinstance(R, Iterable):
        raise UserError(f"{_WHAT}: the accuracy matrix R must be a list of T rows of T scores, got {R!r}")
    rows = list(R)
    if not rows:
        raise UserError(f"{_WHAT}: the accuracy matrix R is empty; it needs one row per task (T x T)")
    T = len(rows)
    matrix = []
    for i, row in enumerate(rows):
        if row is None or isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise UserError(f"{_WHAT}: R[{i}] must be a row of {T} scores, got {row!r}")
        cells = list(row)
        if len(cells) != T:
            raise UserError(
                f"{_WHAT}: R[{i}] has {_count(len(cells))}, expected {T}: R must be square (T x T), "
                f"row i scoring all {T} tasks after training on task i"
            )
        matrix.append([_checked_score(v, f"R[{i}][{j}]") for j, v in enumerate(cells)])
    return matrix


def _checked_baseline(b: Iterable[float], T: int) -> list[float]:
    """b as T finite floats (one per task), or a UserError."""
    if b is None or isinstance(b, (str, bytes)) or not isinstance(b, Iterable):
        raise UserError(f"{_WHAT}: the starting scores b must be a list of {T} scores, got {b!r}")
    cells = list(b)
    if len(cells) != T:
        raise UserError(f"{_WHAT}: b has {_count(len(cells))}, expected {T} (one per task, as R is {T} x {T})")
    return [_checked_score(v, f"b[{j}]") for j, v in enumerate(cells)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def average_accuracy(R: Sequence[Sequence[float]]) -> float:
    """ACC = (1/T) sum_{j=0}^{T-1} R[T-1][j]: the mean score over all tasks at the end of the stream.

    Lopez-Paz & Ranzato, NeurIPS 2017, "Gradient Episodic Memory for Continual Learning" (ACC).
    """
    matrix = _checked_matrix(R)
    return _mean(matrix[-1])


def backward_transfer(R: Sequence[Sequence[float]]) -> float | None:
    """BWT = 1/(T-1) sum_{j=0}^{T-2} (R[T-1][j] - R[j][j]): how training on later tasks changed earlier ones.

    Negative is forgetting, positive is later tasks helping earlier ones. Lopez-Paz & Ranzato, NeurIPS 2017,
    "Gradient Episodic Memory for Continual Learning" (BWT). None when T = 1 (no earlier task: undefined).
    """
    matrix = _checked_matrix(R)
    T = len(matrix)
    if T == 1:
        return None
    return _mean([matrix[T - 1][j] - matrix[j][j] for j in range(T - 1)])


def forward_transfer(R: Sequence[Sequence[float]], b: Sequence[float]) -> float | None:
    """FWT = 1/(T-1) sum_{j=1}^{T-1} (R[j-1][j] - b[j]): the gain on each task from the earlier tasks alone.

    R[j-1][j] is task j scored just before its own training, b[j] the starting model's score on it.
    Lopez-Paz & Ranzato, NeurIPS 2017, "Gradient Episodic Memory for Continual Learning" (FWT).
    None when T = 1 (no task comes after another: undefined).
    """
    matrix = _checked_matrix(R)
    T = len(matrix)
    baseline = _checked_baseline(b, T)
    if T == 1:
        return None
    return _mean([matrix[j - 1][j] - baseline[j] for j in range(1, T)])


def forgetting_per_task(R: Sequence[Sequence[float]]) -> list[float]:
    """f_j = max_{l in 0..T-2} R[l][j] - R[T-1][j] for each task j in 0..T-2 (the last task has none).

    Chaudhry, Dokania, Ajanthan, Torr, ECCV 2018, "Riemannian Walk for Incremental Learning" (their f_j^k
    with k = T-1): the drop from the task's best score before the last step to its score at the end.
    The max runs over every step 0..T-2, as in the paper's equation. An empty list when T = 1.
    """
    matrix = _checked_matrix(R)
    T = len(matrix)
    return [max(matrix[step][j] for step in range(T - 1)) - matrix[T - 1][j] for j in range(T - 1)]


def forgetting(R: Sequence[Sequence[float]]) -> float | None:
    """F = 1/(T-1) sum_{j=0}^{T-2} f_j, the average forgetting after the last task (f_j: forgetting_per_task).

    Chaudhry, Dokania, Ajanthan, Torr, ECCV 2018, "Riemannian Walk for Incremental Learning" (their F_k
    with k = T-1). Always >= -BWT (see the module docstring). None when T = 1 (undefined).
    """
    per_task = forgetting_per_task(R)
    return _mean(per_task) if per_task else None


def learning_accuracy(R: Sequence[Sequence[float]]) -> float:
    """LA = (1/T) sum_{j=0}^{T-1} R[j][j]: the mean score of each task just after its own training.

    Riemer et al., ICLR 2019, "Learning to Learn without Forgetting by Maximizing Transfer and Minimizing
    Interference" (learning accuracy); the diagonal of Lopez-Paz & Ranzato's R.
    """
    matrix = _checked_matrix(R)
    return _mean([matrix[j][j] for j in range(len(matrix))])


def stream_metrics(R: Sequence[Sequence[float]], b: Sequence[float]) -> dict[str, Any]:
    """Every metric of this module for one stream; backward_transfer, forward_transfer and forgetting are None
    (and forgetting_per_task empty) when T = 1."""
    matrix = _checked_matrix(R)
    baseline = _checked_baseline(b, len(matrix))
    return {
        "average_accuracy": average_accuracy(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forward_transfer": forward_transfer(matrix, baseline),
        "forgetting": forgetting(matrix),
        "learning_accuracy": learning_accuracy(matrix),
        "forgetting_per_task": forgetting_per_task(matrix),
    }


def matrix_html(R: Sequence[Sequence[float]], task_names: Sequence[str], b: Sequence[float] | None = None) -> str:
    """R as an HTML heat map for a report: a row "after <task>" per step, a column per task, the starting
    scores b first as "before training" when given. Scores are fractions in [0, 1], shown as percentages
    with one decimal (core.report.heatmap_html prints them with :g, so 83.0 shows as 83)."""
    matrix = _checked_matrix(R)
    T = len(matrix)
    names = [str(name) for name in task_names]
    if len(names) != T:
        raise UserError(f"{_WHAT}: {len(names)} task names for a {T} x {T} matrix R; give one name per task")
    rows = [(f"after {name}", matrix[i], f"R[{i}]") for i, name in enumerate(names)]
    if b is not None:
        rows.insert(0, ("before training", _checked_baseline(b, T), "b"))
    for _, scores, where in rows:
        for j, score in enumerate(scores):
            if not 0.0 <= score <= 1.0:
                raise UserError(f"{_WHAT}: the heat map shows scores in [0, 1] as percentages, {where}[{j}] = {score}")
    return heatmap_html(
        [label for label, _, _ in rows],
        names,
        [[round(100 * score, 1) for score in scores] for _, scores, _ in rows],
        100.0,
        "score % (row: after training on)",
    )
