"""The tasks of a stream, read and encoded once: each task's examples as token ids and head rows of the
stream's label space (labels.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.data.builtin import BUILTIN_DATASETS
from lmforge.data.classify import encode, refuse_text_pairs
from lmforge.data.files import Task, describe, load_task, manifest_entry
from lmforge.errors import UserError
from lmforge.methods.continual.labels import StreamLabels, stream_labels


@dataclass
class StreamTask:
    name: str
    task: Task
    train_ids: list[list[int]] | None = None
    train_rows: list[int] | None = None  # the head row of each training example's label
    eval_ids: list[list[int]] | None = None
    eval_rows: list[int] | None = None


def task_specs(spec: str) -> tuple[str, str, str]:
    """(name, training split, evaluation split) of one entry of continual.tasks."""
    if "|" in spec:
        train, _, held_out = spec.partition("|")
        if not train.strip() or not held_out.strip():
            raise UserError(f"continual.tasks: {spec!r}: write TRAIN_FILE|EVAL_FILE, both files named")
        return Path(train.strip()).stem, train.strip(), held_out.strip()
    if spec not in BUILTIN_DATASETS:
        raise UserError(
            f"continual.tasks: {spec!r}: not a builtin dataset ({', '.join(BUILTIN_DATASETS)}) nor a "
            "TRAIN_FILE|EVAL_FILE pair"
        )
    return spec, f"{spec}:train", f"{spec}:dev"


def load_stream(cfg: RunConfig) -> tuple[list[StreamTask], StreamLabels]:
    """Every task of `continual.tasks`, checked (bad input: a UserError naming the task and the file),
    and the stream's label space."""
    c, data = cfg.options, cfg.data
    if not c.tasks:
        raise UserError("continual.tasks: empty; list the stream's tasks in order")
    if data.train or data.eval:
        raise UserError("data.train, data.eval: not used by continual (the tasks come from continual.tasks); "
                        "leave them empty")  # fmt: skip
    refuse_text_pairs(data, "continual", "its tasks are builtin datasets or files of single texts")
    if data.subset:
        raise UserError("data.subset: not used by continual (its tasks are builtin datasets or files); leave it empty")
    tasks = []
    for spec in c.tasks:
        name, train, held_out = task_specs(spec)
        task = load_task(train, held_out, data.text_column, data.label_column,
                         data.max_train_examples, data.max_eval_examples)  # fmt: skip
        say(f"task {len(tasks) + 1} {name}: {describe(task.train)}; {describe(task.eval)}")
        tasks.append(StreamTask(name, task))
    space = stream_labels(c.setting, [t.name for t in tasks], [t.task.labels for t in tasks])
    return tasks, space


def encode_stream(tokenizer, tasks: list[StreamTask], space: StreamLabels, max_length: int) -> None:
    """Token ids and head rows of every task's examples, in place."""
    for i, t in enumerate(tasks):
        t.train_ids = encode(tokenizer, t.task.train.texts, max_length)
        t.train_rows = [space.class_of(i, label) for label in t.task.train.labels]
        t.eval_ids = encode(tokenizer, t.task.eval.texts, max_length)
        t.eval_rows = [space.class_of(i, label) for label in t.task.eval.labels]


def stream_manifest(tasks: list[StreamTask], space: StreamLabels) -> dict:
    return {
        "setting": space.setting,
        "labels": space.labels,
        "tasks": [{"name": t.name, "train": manifest_entry(t.task.train), "eval": manifest_entry(t.task.eval)}
                  for t in tasks],
    }  # fmt: skip
