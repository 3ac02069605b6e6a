"""Continual learning over a stream of classification tasks (Wu, Luu, Pan, Wang, Phung, Haffari 2024,
"Continual Learning for Large Language Models: A Survey", section 4: the strategies; the metrics of
Lopez-Paz and Ranzato 2017 and Chaudhry et al. 2018 in metrics.py):

    b   <- the starting model's score on every task (forward transfer's reference)
    for i = 1..T:
        model_i <- train task i from model_{i-1}, with the strategy's extra terms (task_run.py)
        R[i] <- model_i's score on every task
    ACC, BWT, FWT, forgetting from R and b

The stream is the parent run; each task a child run in stages/task-<i>-<name>/ that starts from the previous
one's final/, each row of R a stage (stages/scores-<i>.json): `--resume` after `kill -9` anywhere goes on
at the first unfinished piece. Under `accelerate launch` every process trains each task; the main process
scores the models and writes the parent's files, the others read them. `joint` trains one child run on every
task at once (the upper bound).
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmforge.adapters.lora import lora_layers
from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.processes import is_main_process
from lmforge.core.result import RunResult
from lmforge.core.rundir import open_parent_run, publish_folder
from lmforge.core.stages import FINISHED, shared_child_run, shared_stage
from lmforge.errors import UserError
from lmforge.methods.continual.ewc import EwcAnchor, ewc_penalty
from lmforge.methods.continual.labels import StreamLabels
from lmforge.methods.continual.metrics import stream_metrics
from lmforge.methods.continual.olora import l2_loss, lora_A_matrices, orthogonality_loss
from lmforge.methods.continual.replay import ReservoirBuffer
from lmforge.methods.continual.report import write_stream_report
from lmforge.methods.continual.stream import StreamTask, encode_stream, load_stream, stream_manifest
from lmforge.methods.continual.task_run import (
    LORA_A,
    TASK_ADAPTER,
    EarlierTasks,
    evaluate_task,
    ewc_anchor,
    train_task,
    with_task_adapter,
)
from lmforge.models.classifier import load_classifier, load_saved_classifier, load_tokenizer


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    c = cfg.options
    tasks, space = load_stream(cfg)  # every input checked before the run folder is written
    if c.strategy == "adapters" and space.setting != "task":
        raise UserError(f"continual.strategy: adapters picks each task's LoRA by its task id: it needs "
                        f"continual.setting: task, not {space.setting}")  # fmt: skip
    tokenizer = load_tokenizer(cfg.model.name)
    encode_stream(tokenizer, tasks, space, cfg.model.max_length)
    run = open_parent_run(run_dir, cfg.to_yaml(), cfg.train.seed, stream_manifest(tasks, space), resume)
    stages = run.path / "stages"

    before = scores_stage(stages, 0, None, cfg, tasks, space, [])
    if c.strategy == "joint":
        rows, children, buffer_size = train_jointly(cfg, stages, tasks, space, tokenizer)
    else:
        rows, children, buffer_size = train_stream(cfg, stages, tasks, space, tokenizer)
    seconds = [json.loads((child / "final.json").read_text())["train_seconds"] for child in children]
    b = [before[t.name]["accuracy"] for t in tasks]
    if c.strategy == "joint":  # one model after every task: no matrix, no transfer to measure
        matrix, metrics = None, {"average_accuracy": sum(rows[-1][t.name]["accuracy"] for t in tasks) / len(tasks)}
    else:
        matrix = [[row[t.name]["accuracy"] for t in tasks] for row in rows]
        metrics = stream_metrics(matrix, b)
    final = {
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
        "stream": metrics,
        "tasks": [t.name for t in tasks],
        "setting": space.setting,
        "strategy": c.strategy,
        "matrix": matrix,
        "before": b,
        "scores": rows,
        "labels": space.labels,
        "replay_buffer": buffer_size,
        "train_seconds": round(sum(seconds), 3),
        "task_train_seconds": seconds,
    }
    if is_main_process():  # under `accelerate launch` every process trained the tasks; one writes
        publish_folder(children[-1] / "final", run.final)
        run.write_json("final.json", final)  # written last: it marks a finished run
        write_stream_report(run.path, final)
    return RunResult(run_dir, final["metrics"], ("average_accuracy", metrics["average_accuracy"]))


def train_stream(cfg: RunConfig, stages: Path, tasks: list[StreamTask], space: StreamLabels, tokenizer):
    """Task after task, each from the previous one's model; returns the rows of R, the child runs and the
    replay buffer's size."""
    c = cfg.options
    buffer = ReservoirBuffer(c.replay_size, cfg.train.seed)
    rows, children, start, anchors, lora_As = [], [], None, [], []
    for i, task in enumerate(tasks):
        earlier = EarlierTasks(
            replay=list(buffer.items) if c.strategy == "replay" else [],
            teacher=start if c.strategy == "lwf" else None,
            regularizer=strategy_penalty(c, list(anchors), list(lora_As)),
        )
        child = shared_child_run(stages, f"task-{i + 1}-{task.name}")
        if child.state == FINISHED:
            say(f"task {i + 1} ({task.name}): finished earlier ({child.folder})")
        else:
            say(f"task {i + 1} of {len(tasks)}: {task.name} ({c.strategy}, {space.setting}-incremental)")
            train_task(cfg, child.folder, child.resume, tasks, space, i, start, earlier, tokenizer)
        children.append(child.folder)
        start = child.folder / "final"
        adapters = [folder / "final" / TASK_ADAPTER for folder in children] if c.strategy == "adapters" else []
        rows.append(scores_stage(stages, i + 1, start, cfg, tasks, space, adapters))
        if c.strategy == "ewc" and i + 1 < len(tasks):  # theta* and F of this task, kept as a stage
            anchors.append(anchor_stage(stages, i, start, cfg, tasks, space, tokenizer.pad_token_id))
        if c.strategy == "olora":  # this task's subspaces, which the next tasks keep orthogonal to
            lora_As.append(load_file(str(start / LORA_A)))
        if c.strategy == "replay":  # reservoir over the stream's examples, in a seeded order per task
            order = list(range(len(task.train_ids)))
            random.Random(f"{cfg.train.seed}/{i}").shuffle(order)
            for n in order:
                buffer.add([i, n])
    return rows, children, len(buffer) if c.strategy == "replay" else 0


def train_jointly(cfg: RunConfig, stages: Path, tasks: list[StreamTask], space: StreamLabels, tokenizer):
    """Every task at once (the upper bound): one child run, one row of scores."""
    child = shared_child_run(stages, "joint")
    if child.state != FINISHED:
        say(f"joint training on {len(tasks)} tasks ({space.setting}-incremental)")
        train_task(cfg, child.folder, child.resume, tasks, space, len(tasks) - 1, None, EarlierTasks(), tokenizer)
    return [scores_stage(stages, len(tasks), child.folder / "final", cfg, tasks, space, [])], [child.folder], 0


def strategy_penalty(c, anchors: list[EwcAnchor], lora_As: list[dict]):
    """The regularizer of the task about to train (model -> scalar), or None: EWC's quadratic penalty toward
    every finished task, or O-LoRA's orthogonality to the earlier tasks' subspaces plus its L2 term."""
    if c.strategy == "ewc" and anchors:
        return partial(ewc_penalty, anchors=anchors, lam=c.ewc_lambda)
    if c.strategy == "olora" and (lora_As or c.olora_lambda2 > 0):
        return partial(olora_penalty, previous=lora_As, lambda1=c.olora_lambda1, lambda2=c.olora_lambda2)
    return None


def olora_penalty(model, previous: list[dict], lambda1: float, lambda2: float) -> torch.Tensor:
    """lambda_1 * L_orth(this task's A, each earlier A) + lambda_2 * L2(this task's LoRA) (Wang et al. 2023)."""
    current = lora_A_matrices(model)
    loss = lambda1 * orthogonality_loss(current, previous)
    if lambda2 > 0:
        layers = lora_layers(model).values()
        loss = loss + lambda2 * l2_loss([p for layer in layers for p in (layer.lora_A, layer.lora_B)])
    return loss


def scores_stage(
    stages: Path,
    after: int,
    model_folder: Path | None,
    cfg: RunConfig,
    tasks: list[StreamTask],
    space: StreamLabels,
    adapters: list[Path],
) -> dict:
    """Row `after` of the matrix (0: the starting model, b): {task: metrics on its held-out split}, task j
    scored over the classes that compete for it after training tasks 0..max(after - 1, j); with the
    adapters strategy, task j with its own LoRA (`adapters[j]`, where it was trained)."""
    settings = {"after": after, "model": model_folder.parent.name if model_folder else cfg.model.name,
                "tasks": [t.name for t in tasks], "setting": space.setting, "adapters": len(adapters)}  # fmt: skip
    name = f"scores-{after}.json"

    def score(tmp: Path) -> None:  # on the main process only: the others read its scores
        device = "cuda" if torch.cuda.is_available() else "cpu"
        pad_id = load_tokenizer(cfg.model.name).pad_token_id

        def model_for(j: int):
            if model_folder is None:
                model, _ = load_classifier(cfg.model.name, space.labels, cfg.train.seed, cfg.model.dropout)
            else:
                model, _ = load_saved_classifier(model_folder)
            if j < len(adapters):
                model = with_task_adapter(model, adapters[j], cfg.options)
            return model.to(device)

        shared = model_for(len(tasks)) if not adapters else None  # one model for every task, but with adapters
        row = {}
        for j, t in enumerate(tasks):
            mask = space.mask(max(after - 1, j), j)
            model = shared if shared is not None else model_for(j)
            row[t.name] = evaluate_task(model, t, mask, pad_id, cfg.train.eval_batch_size, device)
        tmp.write_text(json.dumps(row) + "\n")

    return json.loads(shared_stage(stages, name, settings, score).read_text())


def anchor_stage(stages: Path, i: int, model_folder: Path, cfg, tasks, space, pad_id: int) -> EwcAnchor:
    """EWC's anchor of task `i` (theta* and the diagonal Fisher), in stages/fisher-<i+1>.safetensors."""
    from safetensors.torch import save_file

    name = f"fisher-{i + 1}.safetensors"
    settings = {"task": tasks[i].name, "model": model_folder.parent.name, "examples": cfg.options.fisher_examples}

    def estimate(tmp: Path) -> None:  # on the main process only: every process reads the same anchor
        anchor = ewc_anchor(model_folder, tasks[i], i, space, cfg.options.fisher_examples, cfg.train.seed, pad_id)
        save_file(anchor.tensors(), str(tmp))

    return EwcAnchor.from_tensors(load_file(str(shared_stage(stages, name, settings, estimate))))


def load_trained(run_dir: Path, cfg: RunConfig):
    return load_saved_classifier(Path(run_dir) / "final")
