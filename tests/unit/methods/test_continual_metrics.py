"""The continual-learning metrics of a task stream (ACC, BWT, FWT: Lopez-Paz & Ranzato 2017; forgetting:
Chaudhry et al. 2018; learning accuracy), against values computed by hand on small matrices."""

import random

import numpy as np
import pytest

from lmforge.errors import UserError
from lmforge.methods.continual.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    learning_accuracy,
    matrix_html,
    stream_metrics,
)

# R[i][j]: score on task j after training on tasks 0..i. Every task drops after later tasks train, and each
# task's best score is the one right after its own training (the diagonal).
R = [
    [0.80, 0.30, 0.20],  # after task 0
    [0.60, 0.90, 0.40],  # after task 1
    [0.50, 0.70, 0.95],  # after task 2 (the end of the stream)
]
B = [0.10, 0.25, 0.30]  # before any training

# Task 0 improves while task 1 trains (0.60 -> 0.80), then falls to 0.40: its best score came after its own
# training, so forgetting counts from 0.80 where BWT counts from 0.60. Task 1 ends above its diagonal.
R_LATE_BEST = [
    [0.60, 0.20, 0.10],  # after task 0
    [0.80, 0.70, 0.30],  # after task 1
    [0.40, 0.75, 0.90],  # after task 2
]


def test_average_accuracy_is_the_mean_of_the_last_row():
    # (R[2][0] + R[2][1] + R[2][2]) / 3 = (0.50 + 0.70 + 0.95) / 3 = 2.15 / 3
    assert average_accuracy(R) == pytest.approx(2.15 / 3)
    assert average_accuracy(R) == pytest.approx(0.716667, abs=1e-6)


def test_backward_transfer_compares_the_last_row_with_the_diagonal():
    # ((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2 = ((0.50 - 0.80) + (0.70 - 0.90)) / 2 = (-0.30 - 0.20) / 2
    assert backward_transfer(R) == pytest.approx(-0.25)


def test_forward_transfer_compares_the_step_before_each_task_with_the_starting_model():
    # ((R[0][1] - b[1]) + (R[1][2] - b[2])) / 2 = ((0.30 - 0.25) + (0.40 - 0.30)) / 2 = (0.05 + 0.10) / 2
    assert forward_transfer(R, B) == pytest.approx(0.075)


def test_forgetting_is_the_drop_from_the_best_earlier_score():
    # f_0 = max(R[0][0], R[1][0]) - R[2][0] = max(0.80, 0.60) - 0.50 = 0.30
    # f_1 = max(R[0][1], R[1][1]) - R[2][1] = max(0.30, 0.90) - 0.70 = 0.20
    # F = (0.30 + 0.20) / 2 = 0.25; the last task (2) has no forgetting
    assert forgetting_per_task(R) == pytest.approx([0.30, 0.20])
    assert forgetting(R) == pytest.approx(0.25)
    # every best score is on the diagonal here, so forgetting equals -BWT
    assert forgetting(R) == pytest.approx(-backward_transfer(R))


def test_learning_accuracy_is_the_mean_of_the_diagonal():
    # (R[0][0] + R[1][1] + R[2][2]) / 3 = (0.80 + 0.90 + 0.95) / 3 = 2.65 / 3
    assert learning_accuracy(R) == pytest.approx(2.65 / 3)


def test_forgetting_differs_from_minus_bwt_when_a_task_peaks_after_its_own_training():
    # BWT = ((0.40 - 0.60) + (0.75 - 0.70)) / 2 = (-0.20 + 0.05) / 2 = -0.075
    assert backward_transfer(R_LATE_BEST) == pytest.approx(-0.075)
    # f_0 = max(0.60, 0.80) - 0.40 = 0.40   (the peak 0.80 came after task 1 trained, not the diagonal 0.60)
    # f_1 = max(0.20, 0.70) - 0.75 = -0.05  (task 1 ended above its best: negative forgetting)
    # F = (0.40 - 0.05) / 2 = 0.175, more than -BWT = 0.075
    assert forgetting_per_task(R_LATE_BEST) == pytest.approx([0.40, -0.05])
    assert forgetting(R_LATE_BEST) == pytest.approx(0.175)
    assert forgetting(R_LATE_BEST) > -backward_transfer(R_LATE_BEST)


def test_forgetting_is_never_below_minus_bwt():
    # max_l R[l][j] >= R[j][j] for every task j <= T-2, so F >= -BWT on any matrix
    rng = random.Random(0)
    for _ in range(200):
        T = rng.randint(2, 6)
        matrix = [[rng.random() for _ in range(T)] for _ in range(T)]
        assert forgetting(matrix) >= -backward_transfer(matrix) - 1e-12


def test_stream_metrics_gathers_every_metric():
    metrics = stream_metrics(R, B)
    assert set(metrics) == {
        "average_accuracy",
        "backward_transfer",
        "forward_transfer",
        "forgetting",
        "learning_accuracy",
        "forgetting_per_task",
    }
    assert metrics["average_accuracy"] == pytest.approx(2.15 / 3)
    assert metrics["backward_transfer"] == pytest.approx(-0.25)
    assert metrics["forward_transfer"] == pytest.approx(0.075)
    assert metrics["forgetting"] == pytest.approx(0.25)
    assert metrics["learning_accuracy"] == pytest.approx(2.65 / 3)
    assert metrics["forgetting_per_task"] == pytest.approx([0.30, 0.20])


def test_one_task_leaves_the_transfers_and_forgetting_undefined():
    one = [[0.7]]
    assert average_accuracy(one) == pytest.approx(0.7)
    assert learning_accuracy(one) == pytest.approx(0.7)
    assert backward_transfer(one) is None
    assert forward_transfer(one, [0.1]) is None
    assert forgetting(one) is None
    assert forgetting_per_task(one) == []
    metrics = stream_metrics(one, [0.1])
    assert metrics["backward_transfer"] is None and metrics["forward_transfer"] is None
    assert metrics["forgetting"] is None and metrics["forgetting_per_task"] == []


def test_numpy_arrays_are_accepted():
    assert backward_transfer(np.array(R)) == pytest.approx(-0.25)
    assert forward_transfer(np.array(R), np.array(B)) == pytest.approx(0.075)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([], "R is empty"),
        ([[0.8, 0.3], [0.6, 0.9], [0.5, 0.7]], r"R\[0\] has 2 scores, expected 3"),  # 3 rows of 2
        ([[0.8, 0.3, 0.2], [0.6, 0.9], [0.5, 0.7, 0.95]], r"R\[1\] has 2 scores, expected 3"),  # a short row
        ([[0.8, 0.3, 0.2], [0.6, 0.9, 0.4], [0.5, 0.7, 0.95, 0.1]], r"R\[2\] has 4 scores, expected 3"),  # a long row
        ([[0.8, 0.3, 0.2], [0.6, 0.9, 0.4]], r"R\[0\] has 3 scores, expected 2"),  # 2 rows of 3
        ([[0.8, 0.3], [None, 0.9]], r"R\[1\]\[0\] is missing"),
        ([[0.8, float("nan")], [0.6, 0.9]], r"R\[0\]\[1\] is nan"),
        ([[0.8, 0.3], [0.6, float("inf")]], r"R\[1\]\[1\] is inf"),
        ([[0.8, "0.3"], [0.6, 0.9]], r"R\[0\]\[1\] is not a number"),
        ([[0.8, 0.3], 0.6], r"R\[1\] must be a row"),
        (None, "R must be a list"),
    ],
)
def test_a_malformed_matrix_is_refused_in_one_line(matrix, message):
    for metric in (average_accuracy, backward_transfer, forgetting, forgetting_per_task, learning_accuracy):
        with pytest.raises(UserError, match=message) as refusal:
            metric(matrix)
        assert "\n" not in str(refusal.value)


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ([0.1, 0.2], "b has 2 scores, expected 3"),
        ([0.1, 0.2, 0.3, 0.4], "b has 4 scores, expected 3"),
        ([0.1, float("nan"), 0.3], r"b\[1\] is nan"),
        ([0.1, None, 0.3], r"b\[1\] is missing"),
        (None, "b must be a list of 3 scores"),
    ],
)
def test_a_malformed_baseline_is_refused(baseline, message):
    with pytest.raises(UserError, match=message):
        forward_transfer(R, baseline)
    with pytest.raises(UserError, match=message):
        stream_metrics(R, baseline)


def test_the_heat_map_has_a_row_per_step_and_the_starting_row_first():
    html = matrix_html([[0.8, 0.333], [0.6, 0.9]], ["sst2", "trec"], b=[0.5, 0.25])
    assert html.index("before training") < html.index("after sst2") < html.index("after trec")
    assert "<th>sst2</th><th>trec</th>" in html  # the columns are the tasks
    assert ">33.3</td>" in html and ">25</td>" in html and ">90</td>" in html  # percentages, one decimal at most
    assert "before training" not in matrix_html([[0.8, 0.333], [0.6, 0.9]], ["sst2", "trec"])


def test_the_heat_map_refuses_wrong_names_and_scores_outside_zero_to_one():
    with pytest.raises(UserError, match="3 task names for a 2 x 2 matrix"):
        matrix_html([[0.8, 0.3], [0.6, 0.9]], ["a", "b", "c"])
    with pytest.raises(UserError, match=r"R\[1\]\[1\] = 90"):
        matrix_html([[0.8, 0.3], [0.6, 90.0]], ["a", "b"])
    with pytest.raises(UserError, match=r"b has 1 score, expected 2"):
        matrix_html([[0.8, 0.3], [0.6, 0.9]], ["a", "b"], b=[0.1])
