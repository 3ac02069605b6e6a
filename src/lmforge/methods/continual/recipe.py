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
at the first unfinished piece. `joint` trains one child run on every task at once (the upper bound).
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import torch

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.result import RunResult
from lmforge.core.rundir import RunDir, build_manifest, publish_folder, write_text_atomic
from lmforge.core.stages import FINISHED, child_run, finished_stage, make_stage
from lmforge.errors import UserError
from lmforge.methods.continual.ewc import EwcAnchor, ewc_penalty
from lmforge.methods.continual.labels import StreamLabels
from lmforge.methods.continual.metrics import stream_metrics
from lmforge.methods.continual.replay import ReservoirBuffer
from lmforge.methods.continual.report import write_stream_report
from lmforge.methods.continual.stream import StreamTask, encode_stream, load_stream, stream_manifest
from lmforge.methods.continual.task_run import EarlierTasks, evaluate_task, ewc_anchor, train_task
from lmforge.models.classifier import load_classifier, load_saved_classifier, load_tokenizer

AVAILABLE = ("sequential", "replay", "lwf", "ewc")


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    c = cfg.options
    if c.strategy not in AVAILABLE:
        raise UserError(f"continual.strategy: {c.strategy!r} is not available yet; one of {', '.join(AVAILABLE)}")
    tasks, space = load_stream(cfg)  # every input checked before the run folder is written
    tokenizer = load_tokenizer(cfg.model.name)
    encode_stream(tokenizer, tasks, space, cfg.model.max_length)
    run = RunDir(run_dir)
    stages = run.path / "stages"
    if not resume:
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"{run.path}: run folder already exists; add --resume to continue it or pick --run-dir")
        stages.mkdir(parents=True)
        manifest = build_manifest(cfg.train.seed, stream_manifest(tasks, space))
        write_text_atomic(run.manifest, json.dumps(manifest, indent=1) + "\n")
        write_text_atomic(run.config, cfg.to_yaml())
    elif (run.path / "final.json").is_file():
        raise UserError(f"{run.path}: this run already finished; nothing to resume")

    before = scores_stage(stages, 0, None, cfg, tasks, space)
    buffer = ReservoirBuffer(c.replay_size, cfg.train.seed)
    rows, start, seconds, anchors = [], None, [], []
    for i, task in enumerate(tasks):
        earlier = EarlierTasks(
            replay=list(buffer.items) if c.strategy == "replay" else [],
            teacher=start if c.strategy == "lwf" else None,
            regularizer=partial(ewc_penalty, anchors=list(anchors), lam=c.ewc_lambda) if anchors else None,
        )
        child = child_run(stages, f"task-{i + 1}-{task.name}")
        if child.state == FINISHED:
            say(f"task {i + 1} ({task.name}): finished earlier ({child.folder})")
        else:
            say(f"task {i + 1} of {len(tasks)}: {task.name} ({c.strategy}, {space.setting}-incremental)")
            train_task(cfg, child.folder, child.resume, tasks, space, i, start, earlier, tokenizer)
        start = child.folder / "final"
        seconds.append(json.loads((child.folder / "final.json").read_text())["train_seconds"])
        rows.append(scores_stage(stages, i + 1, start, cfg, tasks, space))
        if c.strategy == "ewc" and i + 1 < len(tasks):  # theta* and F of this task, kept as a stage
            anchors.append(anchor_stage(stages, i, start, cfg, tasks, space, tokenizer.pad_token_id))
        if c.strategy == "replay":  # reservoir over the stream's examples, in a seeded order per task
            order = list(range(len(task.train_ids)))
            random.Random(f"{cfg.train.seed}/{i}").shuffle(order)
            for n in order:
                buffer.add([i, n])

    matrix = [[row[t.name]["accuracy"] for t in tasks] for row in rows]
    b = [before[t.name]["accuracy"] for t in tasks]
    metrics = stream_metrics(matrix, b)
    publish_folder(start, run.final)
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
        "replay_buffer": len(buffer) if c.strategy == "replay" else 0,
        "train_seconds": round(sum(seconds), 3),
        "task_train_seconds": seconds,
    }
    run.write_json("final.json", final)  # written last: it marks a finished run
    write_stream_report(run.path, final)
    return RunResult(run_dir, final["metrics"], ("average_accuracy", metrics["average_accuracy"]))


def scores_stage(
    stages: Path, after: int, model_folder: Path | None, cfg: RunConfig, tasks: list[StreamTask], space: StreamLabels
) -> dict:
    """Row `after` of the matrix (0: the starting model, b): {task: metrics on its held-out split}, task j
    scored over the classes that compete for it after training tasks 0..max(after - 1, j)."""
    settings = {"after": after, "model": str(model_folder.name if model_folder else cfg.model.name),
                "tasks": [t.name for t in tasks], "setting": space.setting}  # fmt: skip
    name = f"scores-{after}.json"
    path = finished_stage(stages, name, settings)
    if path is None:
        if model_folder is None:
            model, _ = load_classifier(cfg.model.name, space.labels, cfg.train.seed, cfg.model.dropout)
        else:
            model, _ = load_saved_classifier(model_folder)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        pad_id = load_tokenizer(cfg.model.name).pad_token_id
        row = {
            t.name: evaluate_task(
                model, t, space.mask(max(after - 1, j), j), pad_id, cfg.train.eval_batch_size, device
            )  # fmt: skip
            for j, t in enumerate(tasks)
        }
        path = make_stage(stages, name, settings, lambda tmp: tmp.write_text(json.dumps(row) + "\n"))
    return json.loads(path.read_text())


def anchor_stage(stages: Path, i: int, model_folder: Path, cfg, tasks, space, pad_id: int) -> EwcAnchor:
    """EWC's anchor of task `i` (theta* and the diagonal Fisher), in stages/fisher-<i+1>.safetensors."""
    from safetensors.torch import load_file, save_file

    name = f"fisher-{i + 1}.safetensors"
    settings = {"task": tasks[i].name, "model": model_folder.parent.name, "examples": cfg.options.fisher_examples}
    path = finished_stage(stages, name, settings)
    if path is None:
        anchor = ewc_anchor(model_folder, tasks[i], i, space, cfg.options.fisher_examples, cfg.train.seed, pad_id)
        path = make_stage(stages, name, settings, lambda tmp: save_file(anchor.tensors(), str(tmp)))
    return EwcAnchor.from_tensors(load_file(str(path)))


def load_trained(run_dir: Path, cfg: RunConfig):
    return load_saved_classifier(Path(run_dir) / "final")
