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

A text pair (`data.text_pair_column`, NLI and paraphrase tasks) is tokenized as one pair,
`tokenizer(texts, text_pairs)`: `[CLS] text [SEP] pair [SEP]` for BERT, with token type ids 0 then 1 (Devlin
et al. 2019, section 3, "Input/Output Representations"), which `collate` passes on as `token_type_ids`.
A method that cannot take pairs refuses them (`refuse_text_pairs`) rather than drop the second text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import DataConfig
from lmforge.core.console import progress_bar, say
from lmforge.core.metrics import classification_metrics
from lmforge.data.files import Examples, Task, describe, load_task
from lmforge.errors import UserError


def load_classification(data: DataConfig) -> Task:
    """The training and evaluation examples of a run's `data` section and the label set (from training);
    bad input is a UserError naming the file and line. Says how many examples each split has."""
    task = load_task(
        data.train,
        data.eval,
        data.text_column,
        data.label_column,
        data.max_train_examples,
        data.max_eval_examples,
        data.text_pair_column,
        data.subset,
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
    train_type_ids: list[list[int]] | None = None  # text pairs: 0 for the first text's tokens, 1 for the second's
    eval_type_ids: list[list[int]] | None = None

    @property
    def lengths(self) -> list[int]:
        """The training examples' token counts: they order the batches."""
        return [len(x) for x in self.train_ids]


def encode_task(tokenizer, task: Task, max_length: int) -> EncodedTask:
    index = {label: i for i, label in enumerate(task.labels)}
    train_ids, train_type_ids = encode_examples(tokenizer, task.train, max_length)
    eval_ids, eval_type_ids = encode_examples(tokenizer, task.eval, max_length)
    if task.train.text_pairs is not None:  # what the model reads, so that a wrong column shows at once
        say(f"text pairs, the first as the model reads it: {tokenizer.decode(train_ids[0])}")
    return EncodedTask(
        train_ids,
        [index[x] for x in task.train.labels],
        eval_ids,
        [index[x] for x in task.eval.labels],
        len(task.labels),
        train_type_ids,
        eval_type_ids,
    )


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (batches are padded to their own longest)."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def encode_examples(tokenizer, examples: Examples, max_length: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """(token ids, token type ids) per example. Single texts: `encode`'s ids and no type ids. Text pairs: the
    tokenizer's pair encoding, truncated longest text first to `max_length` together, and its token type ids
    (None for a tokenizer without them, e.g. RoBERTa's, whose pair is `<s> A </s></s> B </s>`)."""
    if examples.text_pairs is None:
        return encode(tokenizer, examples.texts, max_length), None
    if tokenizer.sep_token is None:  # GPT-2's tokenizer would run the two texts together
        raise UserError(
            f"data.text_pair_column: the model's tokenizer ({type(tokenizer).__name__}) has no separator token "
            "to mark where the second text starts; use a BERT-style model (minilm, tiny-bert) for text pairs"
        )
    encoded = tokenizer(examples.texts, examples.text_pairs, truncation=True, max_length=max_length)
    return encoded["input_ids"], encoded.get("token_type_ids")


def refuse_text_pairs(data: DataConfig, method: str, why: str) -> None:
    """For a method that takes single texts: a run with data.text_pair_column set is refused, naming the
    method and `why` (what in it takes one text, and what to do instead), rather than trained on the first
    texts alone."""
    if data.text_pair_column:
        raise UserError(f"data.text_pair_column: {method} takes single texts, not text pairs: {why}")


def refuse_pair_run(data: DataConfig, run_dir, command: str) -> None:
    """`lmforge predict` and the explanation commands read single texts: a run trained on text pairs
    is refused, pointing to `lmforge eval`, which reads the pairs."""
    if data.text_pair_column:
        raise UserError(
            f"{run_dir}: trained on text pairs (data.text_pair_column={data.text_pair_column}), but lmforge "
            f"{command} reads single texts; score labelled pairs with lmforge eval {run_dir} --data DATA"
        )


def collate(
    ids: list[list[int]],
    pad_id: int,
    device: torch.device | str = "cpu",
    type_ids: list[list[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: input_ids and attention_mask of shape (B, T), and token_type_ids
    (padded with 0) when the examples are text pairs that have them."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention_mask[i, : len(x)] = 1
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    if type_ids is not None:
        token_type_ids = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(type_ids):
            token_type_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        inputs["token_type_ids"] = token_type_ids.to(device)
    return inputs


def train_inputs(data: EncodedTask, micro: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
    """The model inputs of training examples `micro`: `collate` of their ids (and type ids, for pairs)."""
    types = [data.train_type_ids[j] for j in micro] if data.train_type_ids is not None else None
    return collate([data.train_ids[j] for j in micro], pad_id, device, types)


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the batch, in float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def classification_loss(
    model, data: EncodedTask, micro: list[int], step_size: int, pad_id: int, device
) -> dict[str, torch.Tensor]:
    """{"loss": the micro-batch's summed cross-entropy / the examples of the whole step}: summed over the
    step's micro-batches it is the step's mean, so accumulation is exact (`TrainingRun.accumulate`)."""
    inputs = train_inputs(data, micro, pad_id, device)
    labels = torch.tensor([data.train_labels[j] for j in micro], device=device)
    logits = model(**inputs).logits  # (B, C)
    return {"loss": loss_sum(logits, labels) / step_size}


@torch.no_grad()
def predict_logits(
    model,
    ids: list[list[int]],
    pad_id: int,
    batch_size: int,
    device,
    desc: str | None = None,
    type_ids: list[list[int]] | None = None,
) -> np.ndarray:
    """Logits (N, C) in the input order; batches are formed by length to waste little padding. `type_ids`:
    the token type ids of text pairs (`encode_examples`)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [None] * len(ids)
    starts = range(0, len(order), batch_size)
    for start in progress_bar(starts, desc=desc, leave=False, disable=desc is None):
        chunk = order[start : start + batch_size]
        types = [type_ids[i] for i in chunk] if type_ids is not None else None
        logits = model(**collate([ids[i] for i in chunk], pad_id, device, types)).logits.float().cpu()
        for i, row in zip(chunk, logits, strict=False):
            out[i] = row
    model.train(was_training)
    return torch.stack(out).numpy()


def split_evaluator(model, data: EncodedTask, pad_id: int, batch_size: int, device):
    """What a recipe's TrainingRun calls to evaluate (`t.evaluator`): `evaluate` on the encoded task's
    evaluation split, with its token type ids (text pairs: segment 0, then 1)."""
    return partial(
        evaluate,
        model,
        data.eval_ids,
        data.eval_labels,
        data.n_labels,
        pad_id,
        batch_size,
        device,
        type_ids=data.eval_type_ids,
    )


def evaluate(
    model,
    ids: list[list[int]],
    label_ids: list[int],
    n_labels: int,
    pad_id: int,
    batch_size: int,
    device,
    desc: str | None = "eval",
    type_ids: list[list[int]] | None = None,
) -> dict:
    """accuracy, macro_f1, mean loss and the confusion matrix on one labelled split (`type_ids`: its token
    type ids, for text pairs)."""
    logits = predict_logits(model, ids, pad_id, batch_size, device, desc, type_ids)
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
