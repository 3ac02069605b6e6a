"""The stream's label space: which head rows compete in each continual-learning setting."""

import pytest
import torch

from lmforge.errors import UserError
from lmforge.methods.continual.labels import stream_labels

TASKS = ["sst2", "trec6"]
LABELS = [["negative", "positive"], ["ABBR", "DESC", "LOC"]]


def test_task_incremental_masks_every_other_task():
    space = stream_labels("task", TASKS, LABELS)
    assert space.labels == ["sst2/negative", "sst2/positive", "trec6/ABBR", "trec6/DESC", "trec6/LOC"]
    assert space.allowed(0, 1) == [2, 3, 4]  # the task id is known: only its classes, whatever was trained
    assert space.allowed(1, 0) == [0, 1]
    assert space.class_of(1, "LOC") == 4
    logits = torch.zeros(5) + space.mask(1, 0)
    assert torch.softmax(logits, -1).tolist() == pytest.approx([0.5, 0.5, 0, 0, 0])


def test_class_incremental_lets_every_seen_class_compete():
    space = stream_labels("class", TASKS, LABELS)
    assert space.allowed(0, 0) == [0, 1]  # trec6's classes are not seen yet: masked, as if the head had no rows
    assert space.allowed(1, 0) == [0, 1, 2, 3, 4]  # after both tasks an sst2 example competes with trec6's
    assert space.allowed(1, 1) == [0, 1, 2, 3, 4]


def test_domain_incremental_shares_one_label_set():
    space = stream_labels("domain", ["books", "tweets"], [["neg", "pos"], ["pos", "neg"]])
    assert space.labels == ["neg", "pos"]
    assert space.task_classes == [[0, 1], [1, 0]]
    assert space.allowed(0, 1) == [0, 1]
    with pytest.raises(UserError, match="share one label set"):
        stream_labels("domain", ["a", "b"], [["x", "y"], ["x", "z"]])


def test_bad_settings_and_repeated_tasks_are_refused():
    with pytest.raises(UserError, match="one of task, class, domain"):
        stream_labels("instance", TASKS, LABELS)
    with pytest.raises(UserError, match="named twice"):
        stream_labels("task", ["sst2", "sst2"], LABELS)
