"""One task of a stream: a training run (a child run of the stream's run) that starts from the model the
previous task finished with, its loop written out with each strategy's term at its place:

    loss = CE(the task's micro-batch, only the classes that compete)          every strategy
         + CE(earlier tasks' examples, each with its own task's classes)      replay (Chaudhry et al. 2019)
         + lambda_o * KD(previous model -> model) per old task                lwf (Li and Hoiem 2017, eq. 3)
         + (lambda / 2) * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2           ewc (Kirkpatrick et al. 2017, eq. 3)

Each term of a micro-batch is divided by the whole step's example count (the kernel's rule, so gradient
accumulation is exact); the replayed examples of a step are drawn as a function of (seed, task, step), so
a resumed task replays what an uninterrupted one would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.adapters.lora import inject_lora, lora_layers, remove_lora
from lmforge.config import RunConfig
from lmforge.core.loop import StopSignal, seed_everything
from lmforge.core.metrics import classification_metrics
from lmforge.core.training_run import start_training
from lmforge.data.classify import collate, predict_logits
from lmforge.methods.continual.ewc import EwcAnchor, diagonal_fisher
from lmforge.methods.continual.labels import StreamLabels
from lmforge.methods.continual.lwf import distillation_loss
from lmforge.methods.continual.olora import frozen_copy, lora_A_matrices
from lmforge.methods.continual.stream import StreamTask
from lmforge.models.classifier import load_classifier, load_saved_classifier

Ref = tuple[int, int]  # (task index, example index within the task's training split)


@dataclass
class EarlierTasks:
    """What a task's training reads from the tasks before it."""

    replay: list[Ref] = field(default_factory=list)  # replay: the buffer's examples when this task starts
    teacher: Path | None = None  # lwf: the model the previous task finished with
    regularizer: Callable[[torch.nn.Module], torch.Tensor] | None = None  # ewc: model -> the step's penalty


def masked_logits(model, ids: list[list[int]], masks: torch.Tensor, pad_id: int, device) -> torch.Tensor:
    """(B, C) logits in float32 plus the additive masks (B, C): -inf on the classes that do not compete."""
    return model(**collate(ids, pad_id, device)).logits.float() + masks.to(device)


def evaluate_task(model, task: StreamTask, mask: torch.Tensor, pad_id: int, batch_size: int, device) -> dict:
    """accuracy, macro_f1, balanced accuracy and loss on one task's held-out split, only `mask`'s classes
    competing (the labels are head rows of the stream's label space)."""
    logits = predict_logits(model, task.eval_ids, pad_id, batch_size, device, desc=None) + mask.numpy()
    rows = np.asarray(task.eval_rows)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(rows)).item()
    metrics = classification_metrics(rows, logits.argmax(-1), logits.shape[1])
    metrics.pop("confusion")
    return {"loss": loss, **metrics}


def replay_refs(pool: list[Ref], n: int, seed: int, task: int, step: int) -> list[Ref]:
    """The `n` replayed examples of one step: a function of (seed, task, step) only."""
    if not pool or n == 0:
        return []
    rng = random.Random(f"{seed}/{task}/{step}")
    return [tuple(r) for r in rng.sample(pool, min(n, len(pool)))]


def train_task(
    cfg: RunConfig,
    folder: Path,
    resume: bool,
    tasks: list[StreamTask],
    space: StreamLabels,
    i: int,
    start: Path | None,
    earlier: EarlierTasks,
    tokenizer,
) -> dict:
    """Train task `i` in `folder` from the model in `start` (None: the pretrained model with a fresh head
    over the stream's labels); returns the final metrics on task i's held-out split. `joint` trains tasks
    0..i at once (the recipe passes the last task) and is evaluated on their mean."""
    train, c = cfg.train, cfg.options
    seed_everything(train.seed + i)
    if start is None:
        model, _ = load_classifier(cfg.model.name, space.labels, train.seed, cfg.model.dropout)
    else:
        model, _ = load_saved_classifier(start)
    if c.strategy in ("adapters", "olora"):  # a fresh LoRA for this task; the head's rows train in full
        torch.manual_seed(train.seed + 1000 * (i + 1))
        inject_lora(model, list(c.target_modules), c.lora_r, c.lora_alpha, 0.0, ["classifier"])
    trained = range(i + 1) if c.strategy == "joint" else [i]
    examples = [(k, n) for k in trained for n in range(len(tasks[k].train_ids))]
    lengths = [len(tasks[k].train_ids[n]) for k, n in examples]
    name = "joint" if c.strategy == "joint" else tasks[i].name
    manifest = {"task": name, "index": i, "replayed_from": len(earlier.replay)}
    t = start_training(cfg, folder, resume, model, tokenizer, lengths, manifest, select_metric=train.metric)
    pad_id, device = tokenizer.pad_token_id, t.accelerator.device

    def evaluator() -> dict:  # the trained tasks' held-out metrics (their mean when joint)
        scores = [evaluate_task(t.model, tasks[k], space.mask(i, k), pad_id, train.eval_batch_size, device)
                  for k in trained]  # fmt: skip
        return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}

    t.evaluator = evaluator
    teacher = None
    if earlier.teacher is not None:
        teacher, _ = load_saved_classifier(earlier.teacher)
        teacher.to(device).eval().requires_grad_(False)
    inputs = TaskInputs(t.model, tasks, space, i, examples, pad_id, device, c, teacher)
    replay_n = (c.replay_batch_size or train.batch_size) if c.strategy == "replay" else 0
    penalty = {}  # the step's EWC or O-LoRA penalty, for the metrics line

    def regularizer() -> torch.Tensor:
        value = earlier.regularizer(t.unwrapped)
        penalty[f"{c.strategy}_penalty"] = value.item()
        return value

    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            replayed = replay_refs(earlier.replay, replay_n * len(batch.micro_batches), train.seed, i, t.state.step)
            shares = iter(np.array_split(np.arange(len(replayed)), len(batch.micro_batches)))
            micro_loss = partial(task_loss, inputs, replayed=replayed, shares=shares, step_size=batch.size)
            loss = t.accumulate(batch, micro_loss, regularizer if earlier.regularizer else None)
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop, log={**{f"loss_{k}": v for k, v in t.step_losses.items()}, **penalty})
    summary = {"task": name, "eval_data": [tasks[k].task.eval.source for k in trained]}
    return t.finish(partial(save_task_model, c.strategy), lambda final: summary)


@dataclass
class TaskInputs:
    model: torch.nn.Module
    tasks: list[StreamTask]
    space: StreamLabels
    i: int  # the task being trained
    examples: list[Ref]  # the kernel's example indices -> (task, example)
    pad_id: int
    device: Any
    options: Any  # ContinualConfig
    teacher: torch.nn.Module | None  # lwf


def task_loss(x: TaskInputs, micro: list[int], replayed: list[Ref], shares, step_size: int) -> dict[str, torch.Tensor]:
    """The named losses of one micro-batch (see the module docstring)."""
    refs = [x.examples[j] for j in micro]
    ids = [x.tasks[k].train_ids[n] for k, n in refs]
    rows = torch.tensor([x.tasks[k].train_rows[n] for k, n in refs], device=x.device)
    masks = torch.stack([x.space.mask(x.i, k) for k, _ in refs]).to(x.device)  # (B, C)
    raw = x.model(**collate(ids, x.pad_id, x.device)).logits.float()  # (B, C), every class of the stream
    out = {"task": F.cross_entropy(raw + masks, rows, reduction="sum") / step_size}
    mine = [replayed[j] for j in next(shares)]
    if mine:  # earlier tasks' examples, each scored over the classes that compete for it now
        r_ids = [x.tasks[k].train_ids[n] for k, n in mine]
        r_rows = torch.tensor([x.tasks[k].train_rows[n] for k, n in mine], device=x.device)
        r_masks = torch.stack([x.space.mask(x.i, k) for k, _ in mine])
        r_logits = masked_logits(x.model, r_ids, r_masks, x.pad_id, x.device)
        out["replay"] = F.cross_entropy(r_logits, r_rows, reduction="sum") * len(refs) / (len(mine) * step_size)
    if x.teacher is not None:
        out["distill"] = x.options.lwf_weight * old_task_distillation(x, ids, raw) * len(refs) / step_size
    return out


def old_task_distillation(x: TaskInputs, ids: list[list[int]], raw: torch.Tensor) -> torch.Tensor:
    """LwF's loss on the current inputs `ids` (the model's unmasked logits `raw`, (B, C)): per old task
    (task-incremental: each old task's head) or over all the classes seen before this task (class- and
    domain-incremental), the previous model's softened outputs as targets; the mean over the micro-batch."""
    with torch.no_grad():
        old = x.teacher(**collate(ids, x.pad_id, x.device)).logits.float()  # (B, C)
    if x.space.setting == "task":
        groups = [x.space.task_classes[k] for k in range(x.i)]
    else:
        groups = [sorted({c for k in range(x.i) for c in x.space.task_classes[k]})]
    T = x.options.lwf_temperature
    # Li and Hoiem weight the loss by lambda_o alone (no T^2 factor of Hinton et al.): lambda_o = 1 is theirs
    return sum(distillation_loss(raw[:, g], old[:, g], T, hinton_scale=False) for g in groups)


def ewc_anchor(model_folder: Path, task: StreamTask, i: int, space: StreamLabels, n_examples: int, seed: int,
               pad_id: int) -> EwcAnchor:  # fmt: skip
    """EWC's anchor of finished task `i`: the parameters of the model in `model_folder` and their diagonal
    empirical Fisher on `n_examples` of the task's training examples (a seeded choice), one gradient per
    example (exact, not the per-batch approximation)."""
    model, _ = load_saved_classifier(model_folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    chosen = list(range(len(task.train_ids)))
    random.Random(f"{seed}/fisher/{i}").shuffle(chosen)
    chosen = chosen[:n_examples]
    batches = [chosen[start : start + 8] for start in range(0, len(chosen), 8)]
    mask = space.mask(i, i).to(device)

    def per_example_loss(model, batch: list[int]) -> torch.Tensor:  # (B,) negative log-likelihoods
        logits = model(**collate([task.train_ids[n] for n in batch], pad_id, device)).logits.float() + mask
        rows = torch.tensor([task.train_rows[n] for n in batch], device=device)
        return F.cross_entropy(logits, rows, reduction="none")

    return EwcAnchor.from_model(model, diagonal_fisher(model, batches, per_example_loss))


TASK_ADAPTER = "task_adapter.safetensors"  # adapters: the task's LoRA, beside the model without it
LORA_A = "lora_A.safetensors"  # olora: the task's A matrices, which later tasks keep orthogonal to


def save_task_model(strategy: str, model, tokenizer, folder: Path) -> None:
    """final/ of a task: a plain classifier folder. adapters: the base and head without the task's LoRA
    (saved beside it, chosen by task id at test time); olora: the LoRA merged into the base (every task's
    update stays in the forward, as O-LoRA's frozen adapters do), its A matrices saved beside it."""
    from safetensors.torch import save_file

    extra = {}
    if strategy == "adapters":
        extra[TASK_ADAPTER] = lora_tensors(model)
        for layer in lora_layers(model).values():
            with torch.no_grad():
                layer.lora_B.zero_()  # so that taking the LoRA out leaves the base as it was
    elif strategy == "olora":
        extra[LORA_A] = {name: a.detach().contiguous() for name, a in frozen_copy(lora_A_matrices(model)).items()}
    remove_lora(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for file, tensors in extra.items():
        save_file(tensors, str(folder / file))


def lora_tensors(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach().contiguous()
        out[f"{name}.lora_B"] = layer.lora_B.detach().contiguous()
    return out


def with_task_adapter(model, adapter_file: Path, c) -> torch.nn.Module:
    """`model` (a plain classifier) with the LoRA of one task, read from `adapter_file`: task-incremental
    inference of the adapters strategy."""
    from safetensors.torch import load_file

    inject_lora(model, list(c.target_modules), c.lora_r, c.lora_alpha, 0.0, ["classifier"])
    saved = load_file(str(adapter_file))
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(saved[f"{name}.lora_A"])
            layer.lora_B.copy_(saved[f"{name}.lora_B"])
    return model
