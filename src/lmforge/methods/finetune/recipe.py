"""Full fine-tuning of a sequence classifier (Devlin et al. 2019, BERT, section 4): every weight trains.

The recipe reads top to bottom: load the data, load the model, adapt it (here: optionally freeze
the input embeddings), encode, start training, the loop, finish. The classification pieces are
plain functions of data/classify.py; LoRA and AdaLoRA (methods/lora, methods/adalora) are the same
steps with their adapters.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, describe_parameters, seed_everything
from lmforge.core.training_run import RunResult, scalar_metrics, start_training
from lmforge.data.classify import (
    classification_loss,
    encode_task,
    load_classification,
    split_evaluator,
    summary,
)
from lmforge.data.files import task_manifest
from lmforge.models.classifier import load_classifier, load_saved_classifier


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    train = cfg.train
    task = load_classification(cfg.data)

    seed_everything(train.seed)
    model, tokenizer = load_classifier(cfg.model.name, task.labels, train.seed, cfg.model.dropout)
    if cfg.options.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    say(describe_parameters(cfg.model.name, model))
    data = encode_task(tokenizer, task, cfg.model.max_length)

    t = start_training(
        cfg, run_dir, resume, model, tokenizer, data.lengths, task_manifest(task), select_metric=train.metric
    )
    pad_id, device = tokenizer.pad_token_id, t.accelerator.device
    t.evaluator = split_evaluator(t.model, data, pad_id, train.eval_batch_size, device)
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            micro_loss = partial(classification_loss, t.model, data, step_size=batch.size, pad_id=pad_id, device=device)
            loss = t.accumulate(batch, micro_loss)
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)
    final = t.finish(save_pretrained, partial(summary, task))
    return RunResult(run_dir, scalar_metrics(final), ("accuracy", final["accuracy"]))


def save_pretrained(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_trained(run_dir: Path, cfg: RunConfig):
    return load_saved_classifier(run_dir / "final")
