"""One CReST generation: FixMatch (Sohn et al. 2020, Algorithm 1) from the pretrained model on the
generation's labeled set and the unlabeled set, written out as a training run in its own folder (a child
run of the CReST run); and the pseudo-labeling of the unlabeled set by the model it trained.

Each optimizer step sees `train.batch_size x train.grad_accum` labeled examples (the kernel's batches)
and mu times as many unlabeled ones (a function of (seed, step): a resumed run sees the same ones):

    loss = (1 / B) sum_b H(y_b, p(x_b))                                   supervised, eq. 2
         + lambda_u (1 / mu B) sum_u 1[max q_u >= tau] H(argmax q_u, p(strong(u)))   eq. 4

with q_u = p(y | weak(u)) (no gradient; CReST+ aligns it first, rebalance.py). The weak view's forward
runs without a gradient in train mode: FixMatch feeds both views through the model in one batch and stops
the gradient at q, so the loss and its gradient are the same; only dropout's draws differ.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import RunConfig
from lmforge.core.checkpoint import restore_extra
from lmforge.core.loop import StopSignal, seed_everything
from lmforge.core.stages import shared_stage
from lmforge.core.training_run import start_training
from lmforge.data.classify import (
    EncodedTask,
    classification_loss,
    collate,
    encode,
    encode_task,
    evaluate,
    predict_logits,
    summary,
)
from lmforge.data.files import Examples, Task, manifest_entry
from lmforge.methods.crest.augment import strong_view, weak_view
from lmforge.methods.crest.data import CrestData
from lmforge.methods.crest.fixmatch import unlabeled_loss
from lmforge.methods.crest.rebalance import RunningDistribution, align, alignment_target, alignment_temperature
from lmforge.methods.finetune.recipe import save_pretrained
from lmforge.models.classifier import load_classifier, load_saved_classifier


def unlabeled_indices(n_unlabeled: int, per_step: int, step: int, seed: int) -> np.ndarray:
    """The unlabeled examples of optimizer step `step` (0-based): consecutive slices of a seeded permutation
    of U, a new permutation each pass over it. A function of its arguments only, so resuming is exact."""
    start, out = step * per_step, []
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n_unlabeled)
        order = np.random.default_rng([seed, epoch]).permutation(n_unlabeled)
        out.extend(order[offset : offset + per_step - len(out)].tolist())
    return np.asarray(out)


def train_generation(cfg: RunConfig, folder: Path, resume: bool, data: CrestData, labeled: Examples, g: int) -> dict:
    """Train generation `g` (0-based) in `folder`, from `cfg.model.name` afresh; returns its final metrics."""
    train, c = cfg.train, cfg.options
    task = Task(labeled, data.task.eval, data.task.labels)
    seed_everything(train.seed)
    model, tokenizer = load_classifier(cfg.model.name, task.labels, train.seed, cfg.model.dropout)
    enc = encode_task(tokenizer, task, cfg.model.max_length)
    weak_ids = encode(tokenizer, [weak_view(x) for x in data.unlabeled], cfg.model.max_length)
    manifest = {**data.manifest(), "generation": g + 1, "train": manifest_entry(labeled)}

    t = start_training(cfg, folder, resume, model, tokenizer, enc.lengths, manifest, select_metric=train.metric)
    pad_id, device = tokenizer.pad_token_id, t.accelerator.device
    rank, world = t.accelerator.process_index, t.accelerator.num_processes
    t.evaluator = lambda: evaluate(t.model, enc.eval_ids, enc.eval_labels, enc.n_labels, pad_id,
                                   train.eval_batch_size, device)  # fmt: skip
    running = RunningDistribution(enc.n_labels, c.alignment_momentum)
    if t.resumed_from is not None:
        restore_extra(t.resumed_from, running.load_state_dict)
    t.extra_state = running.state_dict  # the running distribution travels with every checkpoint
    # CReST+: pseudo-labels pulled toward the original labeled distribution, sharpened less each generation
    target = alignment_target(data.labeled_counts, alignment_temperature(g, c.generations, c.t_min))

    per_step = c.unlabeled_ratio * train.batch_size * train.grad_accum  # mu B over all processes
    inputs = FixMatchInputs(t.model, tokenizer, enc, weak_ids, data.unlabeled, pad_id, device, cfg,
                            aligner(target, running) if c.alignment else None, per_step, rank)  # fmt: skip
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            step_unlabeled = unlabeled_indices(len(weak_ids), per_step, t.state.step, train.seed)
            # one share per micro-batch of the whole step (as one process splits it), taken by the processes that
            # hold labeled examples of the micro-batch (all of them but in a last one smaller than `world`)
            size = train.batch_size
            holders = [min(world, len(batch.examples[i : i + size])) for i in range(0, batch.size, size)]
            shares = zip(np.array_split(step_unlabeled, len(holders)), holders)
            view_seed = train.seed * 1_000_000_007 + t.state.step  # a new strong view of each text every step
            stats = {"masked": 0.0}
            micro_loss = partial(fixmatch_loss, inputs, shares=shares, step_size=batch.size,
                                 view_seed=view_seed, stats=stats)  # fmt: skip
            loss = t.accumulate(batch, micro_loss)
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            log = {f"loss_{name}": value for name, value in t.step_losses.items()}
            if c.unlabeled_weight > 0:  # share of the step's unlabeled examples above the threshold
                masked = stats["masked"]
                if world > 1:  # each process counted its own examples
                    masked = t.accelerator.reduce(torch.tensor(masked, device=device), "sum").item()
                log["mask_rate"] = masked / per_step
            t.end_step(loss, started, stop, log=log)
    return t.finish(save_pretrained, lambda final: summary(task, final))


def aligner(target: torch.Tensor, running: RunningDistribution) -> Callable:
    """CReST+'s distribution alignment of this process's weak probabilities `probs` (U, L), the running
    distribution moved by `seen`, the weak probabilities of the micro-batch's whole unlabeled share over all
    processes (U_all, L): every process keeps the running distribution a single process would."""

    def aligned(probs: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:  # (U, L) -> (U, L)
        return align(probs, target.to(probs.device), running.update(seen).to(probs.device))

    return aligned


@dataclass
class FixMatchInputs:
    """What every micro-batch's loss reads: the model, the encoded labeled set, U (texts and weak views)."""

    model: torch.nn.Module
    tokenizer: Any
    enc: EncodedTask
    weak_ids: list[list[int]]  # U's weak views, tokenized once (the weak view is the text)
    texts: list[str]  # U's texts, from which each step's strong views are made
    pad_id: int
    device: Any
    cfg: RunConfig
    align: Callable[..., torch.Tensor] | None  # CReST+ (`aligner`): (U, L) weak probabilities, seen=(U_all, L)
    per_step: int  # unlabeled examples in a whole step over all processes: mu B
    rank: int  # this process's index


def fixmatch_loss(
    x: FixMatchInputs, micro: list[int], shares: Iterator, step_size: int, view_seed: int, stats: dict
) -> dict[str, torch.Tensor]:
    """The named losses of one micro-batch: its labeled examples `micro` and this process's part of the next of
    the step's unlabeled `shares` ((share, the number of processes holding labeled examples of the micro-batch)),
    each loss divided by the whole step's size so that the micro-batches sum to the step's mean.

    Under several processes every process runs the same forward passes (DDP syncs buffers in each, FSDP gathers
    weights): one left without unlabeled examples here runs a stand-in that counts 0. With alignment, every
    process predicts the weak views of the whole share, so that the running distribution is updated by all of
    it on every process alike, with no exchange between them."""
    c, max_length = x.cfg.options, x.cfg.model.max_length
    labeled = classification_loss(x.model, x.enc, micro, step_size, x.pad_id, x.device)["loss"]
    share, holders = next(shares)  # this micro-batch's unlabeled examples, over all processes
    if c.unlabeled_weight == 0 or len(share) == 0:
        return {"labeled": labeled}
    counts = x.rank < min(holders, len(share))  # else none of the share is this process's: a stand-in, counting 0
    mine = slice(x.rank, None, holders) if counts else slice(0, 1)
    u = share[mine]  # this process's
    with torch.no_grad():
        weak = share if x.align is not None else u
        weak_logits = x.model(**collate([x.weak_ids[i] for i in weak], x.pad_id, x.device)).logits  # (len(weak), L)
    transform = None
    if x.align is not None:
        transform = partial(x.align, seen=torch.softmax(weak_logits.detach().float(), dim=-1))
        weak_logits = weak_logits[mine]  # (U, L)
    strong_ids = encode(x.tokenizer, [strong_view(x.texts[i], view_seed, c.strong_p) for i in u], max_length)
    strong_logits = x.model(**collate(strong_ids, x.pad_id, x.device)).logits  # (U, L)
    out = unlabeled_loss(weak_logits, strong_logits, c.threshold, transform)
    if not counts:
        return {"labeled": labeled, "unlabeled": out.loss * 0}
    stats["masked"] += out.mask.sum().item()
    # out.loss is the mean over this share: times its size over the step's mu B is its part of the step's mean
    return {"labeled": labeled, "unlabeled": c.unlabeled_weight * out.loss * len(u) / x.per_step}


def predictions_stage(stages: Path, g: int, model_folder: Path, data: CrestData, cfg: RunConfig) -> dict:
    """The model of generation `g` on every unlabeled text: {"predicted": [...], "confidence": [...],
    "seconds": ..., "examples_per_second": ...}, kept in stages/predictions-<g+1>.json (batched inference,
    sorted by length)."""
    from lmforge.core.rundir import fingerprint

    name = f"predictions-{g + 1}.json"
    settings = {"generation": g + 1, "unlabeled": fingerprint(data.unlabeled, []), "labels": data.task.labels,
                "max_length": cfg.model.max_length}  # fmt: skip

    def predict(tmp: Path) -> None:  # on the main process only: the others read its predictions
        model, tokenizer = load_saved_classifier(model_folder)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        ids = encode(tokenizer, data.unlabeled, cfg.model.max_length)
        started = time.perf_counter()
        logits = predict_logits(model, ids, tokenizer.pad_token_id, cfg.train.eval_batch_size, device,
                                desc=f"pseudo-label U (generation {g + 1})")  # fmt: skip
        seconds = time.perf_counter() - started
        probs = torch.softmax(torch.from_numpy(logits), dim=-1)
        confidence, predicted = probs.max(dim=-1)
        made = {
            "predicted": predicted.tolist(),
            "confidence": [round(x, 6) for x in confidence.tolist()],
            "seconds": round(seconds, 3),
            "examples_per_second": round(len(ids) / max(seconds, 1e-9), 1),
        }
        tmp.write_text(json.dumps(made) + "\n")

    return json.loads(shared_stage(stages, name, settings, predict).read_text())
