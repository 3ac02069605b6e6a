"""Sequence classification as plain functions a recipe calls: load the task, encode it, the loss of a
micro-batch, predict, evaluate (accuracy, macro-F1, loss, confusion) and final.json's summary.

A classifier recipe reads top to bottom on these (methods/finetune/recipe.py):

    task = load_classification(cfg.data)                 # texts and labels, checked, counted
    model, tokenizer = load_classifier(cfg.model.name, task.labels, ...)
    data = encode_task(tokenizer, task, cfg.model.max_length)
    t = start_training(cfg, run_dir, resume, model, tokenizer, data.lengths, task_manifest(task), ...)
    t.evaluator = lambda: evaluate(t.model, data.eval_ids, data.eval_labels, ...)
    ... loss = t.accumulate(batch, lambda micro: classification_loss(t.model, data, micro, batch.size, ...))
    final = t.finish(save, lambda final: summary(task, final))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import DataConfig
from lmforge.core.console import progress_bar, say
from lmforge.core.metrics import classification_metrics
from lmforge.data.files import Task, describe, load_task


def load_classification(data: DataConfig) -> Task:
    """The training and evaluation examples of a run's `data` section and the label set (from training);
    bad input is a UserError naming the file and line. Says how many examples each split has."""
    task = load_task(
        data.train, data.eval, data.text_column, data.label_column, data.max_train_examples, data.max_eval_examples
    )
    say(describe(task.train))
    say(describe(task.eval))
    return task


@dataclass
class EncodedTask:
    """A classification task as token ids (truncated, unpadded) and label indices into the task's labels."""

    train_ids: list[list[int]]
    train_labels: list[int]
    eval_ids: list[list[int]]
    eval_labels: list[int]
    n_labels: int

    @property
    def lengths(self) -> list[int]:
        """The training examples' token counts: they order the batches."""
        return [len(x) for x in self.train_ids]


def encode_task(tokenizer, task: Task, max_length: int) -> EncodedTask:
    index = {label: i for i, label in enumerate(task.labels)}
    return EncodedTask(
        encode(tokenizer, task.train.texts, max_length),
        [index[x] for x in task.train.labels],
        encode(tokenizer, task.eval.texts, max_length),
        [index[x] for x in task.eval.labels],
        len(task.labels),
    )


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (batches are padded to their own longest)."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def collate(ids: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: input_ids and attention_mask of shape (B, T)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention_mask[i, : len(x)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the batch, in float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def classification_loss(
    model, data: EncodedTask, micro: list[int], step_size: int, pad_id: int, device
) -> dict[str, torch.Tensor]:
    """{"loss": the micro-batch's summed cross-entropy / the examples of the whole step}: summed over the
    step's micro-batches it is the step's mean, so accumulation is exact (`TrainingRun.accumulate`)."""
    inputs = collate([data.train_ids[j] for j in micro], pad_id, device)
    labels = torch.tensor([data.train_labels[j] for j in micro], device=device)
    logits = model(**inputs).logits  # (B, C)
    return {"loss": loss_sum(logits, labels) / step_size}


@torch.no_grad()
def predict_logits(
    model, ids: list[list[int]], pad_id: int, batch_size: int, device, desc: str | None = None
) -> np.ndarray:
    """Logits (N, C) in the input order; batches are formed by length to waste little padding."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [None] * len(ids)
    starts = range(0, len(order), batch_size)
    for start in progress_bar(starts, desc=desc, leave=False, disable=desc is None):
        chunk = order[start : start + batch_size]
        logits = model(**collate([ids[i] for i in chunk], pad_id, device)).logits.float().cpu()
        for i, row in zip(chunk, logits, strict=False):
            out[i] = row
    model.train(was_training)
    return torch.stack(out).numpy()


def evaluate(
    model,
    ids: list[list[int]],
    label_ids: list[int],
    n_labels: int,
    pad_id: int,
    batch_size: int,
    device,
    desc: str | None = "eval",
) -> dict:
    """accuracy, macro_f1, mean loss and the confusion matrix on one labelled split."""
    logits = predict_logits(model, ids, pad_id, batch_size, device, desc)
    labels = np.asarray(label_ids)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {"loss": loss, **classification_metrics(labels, logits.argmax(-1), n_labels)}


def summary(task: Task, final: dict) -> dict:
    """final.json's part about the evaluation: the labels (in the model's order: `lmforge eval`, `predict`
    and `explain` read them), the confusion matrix and the data evaluated on."""
    return {
        "labels": task.labels,
        "confusion": final["confusion"],
        "eval_data": task.eval.source,
        "n_examples": len(task.eval),
    }
