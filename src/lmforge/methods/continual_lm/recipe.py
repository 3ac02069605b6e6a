"""Continual pretraining of a causal LM (Wu et al. 2024, section 3, continual instruction tuning): one domain
after another (GSM8K's worked solutions, then MBPP's programs), each a child run of the `sft` method (full
fine-tuning) starting from the model the previous task finished with; after each task the held-out loss of
every task is measured (the loss matrix L[i][j], lower is better). With `replay`, each later task's training
data is mixed with a reservoir sample of earlier tasks' pairs (Chaudhry et al. 2019's ER, as data).

    b   <- the base model's held-out loss on every task
    for i = 1..T:  model_i <- SFT(model_{i-1}, task i's pairs [+ replayed pairs]);  L[i] <- held-out losses
    forgetting of task j: L[T][j] - min_{l<T} L[l][j] (how far its loss rose from its best)

Under `accelerate launch` every process trains each task; the main process writes the pairs and measures the
losses (stages), the others read them.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import torch

from lmforge.config import DataConfig, RunConfig
from lmforge.core.console import say
from lmforge.core.processes import is_main_process
from lmforge.core.result import RunResult
from lmforge.core.rundir import fingerprint, open_parent_run, publish_folder
from lmforge.core.stages import FINISHED, shared_child_run, shared_stage
from lmforge.data.pairs import Pair, Pairs, carve_dev, encode_pairs, load_pairs
from lmforge.errors import UserError
from lmforge.methods.continual.replay import ReservoirBuffer
from lmforge.methods.continual.report import write_loss_report
from lmforge.methods.sft.config import SftConfig
from lmforge.models.causal_lm import load_causal_lm


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    c = cfg.options
    streams = load_lm_stream(cfg)  # [(name, training pairs, held-out pairs)], checked before anything is written
    data = {"tasks": [{"name": n, "train": t.examples().source, "train_pairs": len(t), "held_out": len(h)}
                      for n, t, h in streams]}  # fmt: skip
    run = open_parent_run(run_dir, cfg.to_yaml(), cfg.train.seed, data, resume)
    stages = run.path / "stages"
    held_out_files = [pairs_stage(stages, f"held-out-{i + 1}.jsonl", h) for i, (_, _, h) in enumerate(streams)]

    before = loss_stage(stages, 0, cfg.model.name, cfg, streams)
    buffer = ReservoirBuffer(c.replay_size, cfg.train.seed)
    rows, start, seconds = [], cfg.model.name, []
    for i, (name, train_pairs, _) in enumerate(streams):
        replayed = [Pair(*p) for p in buffer.items] if c.strategy == "replay" else []
        train_file = pairs_stage(stages, f"train-{i + 1}.jsonl", Pairs(train_pairs.pairs + replayed, name))
        child = shared_child_run(stages, f"task-{i + 1}-{name}")
        if child.state == FINISHED:
            say(f"task {i + 1} ({name}): finished earlier ({child.folder})")
        else:
            say(f"task {i + 1} of {len(streams)}: {name}, {len(train_pairs):,} pairs + {len(replayed):,} replayed")
            sft_child(cfg, child, start, train_file, held_out_files[i])
        start = str(child.folder / "final")
        seconds.append(json.loads((child.folder / "final.json").read_text())["train_seconds"])
        rows.append(loss_stage(stages, i + 1, start, cfg, streams))
        if c.strategy == "replay":  # reservoir over the stream's training pairs, in a seeded order per task
            order = list(range(len(train_pairs)))
            random.Random(f"{cfg.train.seed}/{i}").shuffle(order)
            for n in order:
                p = train_pairs.pairs[n]
                buffer.add([p.prompt, p.completion, p.where])

    names = [n for n, _, _ in streams]
    matrix = [[row[n]["loss"] for n in names] for row in rows]
    b = [before[n]["loss"] for n in names]
    last = len(names) - 1
    rise = [matrix[last][j] - matrix[j][j] for j in range(last)]
    forgetting = [matrix[last][j] - min(matrix[k][j] for k in range(last)) for j in range(last)]
    metrics = {"average_final_loss": sum(matrix[last]) / len(names)}
    if last:
        metrics |= {"loss_rise": sum(rise) / last, "forgetting": sum(forgetting) / last}
    final = {"metrics": metrics, "tasks": names, "strategy": c.strategy, "loss_matrix": matrix, "before": b,
             "loss_rise_per_task": rise, "forgetting_per_task": forgetting, "scores": rows,
             "replayed": len(buffer) if c.strategy == "replay" else 0, "train_seconds": round(sum(seconds), 3),
             "task_train_seconds": seconds}  # fmt: skip
    if is_main_process():  # under `accelerate launch` every process trained the tasks; one writes
        publish_folder(Path(start), run.final)
        run.write_json("final.json", final)  # written last: it marks a finished run
        write_loss_report(run.path, final)
    return RunResult(run_dir, metrics, ("average_final_loss", metrics["average_final_loss"]))


def load_lm_stream(cfg: RunConfig) -> list[tuple[str, Pairs, Pairs]]:
    c, data = cfg.options, cfg.data
    if not c.tasks:
        raise UserError("continual_lm.tasks: empty; list the stream's tasks in order")
    if data.train or data.eval:
        raise UserError("data.train, data.eval: not used by continual_lm (the tasks come from continual_lm.tasks); "
                        "leave them empty")  # fmt: skip
    if data.text_pair_column or data.subset:
        raise UserError("data.text_pair_column / data.subset: not available for continual_lm (its tasks are pairs)")
    streams, names = [], []
    for spec in c.tasks:
        pairs = load_pairs(spec, 0, c.prompt_column, c.completion_column)
        train, held = carve_dev(pairs, c.held_out)
        name = Path(spec.split(":")[0]).stem
        if name in names:
            raise UserError(f"continual_lm.tasks: {name!r} is named twice; name each task once")
        names.append(name)
        streams.append((name, train.head(data.max_train_examples), held))
        say(f"task {len(streams)} {name}: {len(streams[-1][1]):,} training pairs, {len(held):,} held out")
    return streams


def pairs_stage(stages: Path, name: str, pairs: Pairs) -> Path:
    """`pairs` as a prompt/completion .jsonl file the sft method reads, kept as a stage."""
    rows = [{"prompt": p.prompt, "completion": p.completion} for p in pairs.pairs]
    settings = {
        "pairs": len(rows),
        "sha256_16": fingerprint([r["prompt"] for r in rows], [r["completion"] for r in rows]),
    }
    text = "".join(json.dumps(r) + "\n" for r in rows)
    return shared_stage(stages, name, settings, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sft_child(cfg: RunConfig, child, start: str, train_file: Path, held_out_file: Path) -> None:
    """Task i by the sft method (full fine-tuning) from `start` (a model name or the previous task's final/)."""
    from lmforge.methods.sft.recipe import run as sft_run

    sft_cfg = RunConfig(
        method="sft",
        model=dataclasses.replace(cfg.model, name=start),
        data=DataConfig(train=str(train_file), eval=str(held_out_file)),
        train=cfg.train,
        options=SftConfig(lora=False),
    )
    sft_run(sft_cfg, child.folder, resume=child.resume)


@torch.no_grad()
def loss_stage(stages: Path, after: int, model_name: str, cfg: RunConfig, streams) -> dict:
    """Row `after` of the loss matrix (0: the base model): {task: held-out loss and perplexity}."""
    from lmforge.methods.sft.recipe import held_out_loss

    name = f"losses-{after}.json"
    settings = {"after": after, "tasks": [n for n, _, _ in streams], "max_length": cfg.model.max_length}

    def measure(tmp: Path) -> None:  # on the main process only: the others read its losses
        model, tokenizer = load_causal_lm(model_name, seed=cfg.train.seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        row = {}
        for task, _, held in streams:
            _, encoded = encode_pairs(tokenizer, held, cfg.model.max_length)
            row[task] = held_out_loss(model, encoded, tokenizer.pad_token_id, cfg.train.eval_batch_size, device)
        tmp.write_text(json.dumps(row) + "\n")

    return json.loads(shared_stage(stages, name, settings, measure).read_text())


def load_trained(run_dir: Path, cfg: RunConfig):
    return load_causal_lm(str(Path(run_dir) / "final"), seed=cfg.train.seed)
