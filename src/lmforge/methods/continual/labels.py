"""One label space for a stream of classification tasks, and which of its classes each step may predict.

The classifier has one head over every class of the stream, allocated when the stream starts (the tasks
are listed in the recipe). The continual-learning settings (van de Ven, Tuytelaars, Tolias, Nature Machine
Intelligence 2022, "Three types of incremental learning"; the survey of Wu et al. 2024, section 2) differ
in which of those classes compete:

- task-incremental: a task's classes are its own (`sst2/negative`, `trec6/LOC`); the task id is known at
  training and test time, so only that task's classes compete. Masking the other logits is exactly one
  head per task: each class's row of the head is its own.
- class-incremental: classes are a task's own too, but no task id is given: every class seen so far
  competes (the classes of tasks still to come are masked, which is the same as a head that grows).
- domain-incremental: every task shares one label set (sentiment of reviews, then of tweets): the classes
  are the labels themselves and all of them compete at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.errors import UserError

SETTINGS = ("task", "class", "domain")


@dataclass(frozen=True)
class StreamLabels:
    setting: str
    task_names: list[str]
    labels: list[str]
    """every class of the stream, in head order"""
    task_classes: list[list[int]]
    """the head rows of each task's labels, in the task's own label order"""

    def class_of(self, task: int, label: str) -> int:
        """The head row of `label` of task `task`."""
        return self.labels.index(self.qualified(task, label))

    def qualified(self, task: int, label: str) -> str:
        return label if self.setting == "domain" else f"{self.task_names[task]}/{label}"

    def allowed(self, trained_through: int, task: int) -> list[int]:
        """The head rows that compete for an example of `task` after training tasks 0..trained_through."""
        if self.setting == "task":
            return self.task_classes[task]
        if self.setting == "class":
            seen = sorted({c for t in range(trained_through + 1) for c in self.task_classes[t]})
            return seen
        return list(range(len(self.labels)))

    def mask(self, trained_through: int, task: int) -> torch.Tensor:
        """(C,) additive mask: 0 on the allowed rows, -inf elsewhere (add it to the logits)."""
        out = torch.full((len(self.labels),), float("-inf"))
        out[self.allowed(trained_through, task)] = 0.0
        return out


def stream_labels(setting: str, task_names: list[str], task_labels: list[list[str]]) -> StreamLabels:
    """The label space of tasks named `task_names` whose training data have the labels `task_labels`."""
    if setting not in SETTINGS:
        raise UserError(f"continual.setting: {setting!r}: one of {', '.join(SETTINGS)}")
    if len(set(task_names)) != len(task_names):
        raise UserError(f"continual.tasks: a task is named twice ({', '.join(task_names)}); name each once")
    if setting == "domain":
        first = set(task_labels[0])
        for name, labels in zip(task_names, task_labels):
            if set(labels) != first:
                raise UserError(
                    f"continual.setting: domain: every task must share one label set; {name} has "
                    f"{sorted(labels)}, {task_names[0]} {sorted(first)}"
                )
        labels = list(task_labels[0])
        return StreamLabels(setting, task_names, labels, [[labels.index(x) for x in ls] for ls in task_labels])
    labels, task_classes = [], []
    for name, own in zip(task_names, task_labels):
        task_classes.append(list(range(len(labels), len(labels) + len(own))))
        labels += [f"{name}/{label}" for label in own]
    return StreamLabels(setting, task_names, labels, task_classes)
