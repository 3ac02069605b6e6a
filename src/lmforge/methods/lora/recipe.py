"""LoRA fine-tuning of a sequence classifier (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large
Language Models", equation 3: h = W0 x + (alpha / r) B A x, with A random and B zero at the start).

Full fine-tuning's steps (methods/finetune/recipe.py), with LoRA's two changes at their place:
adapters on `target_modules` (every other weight frozen, the fresh classifier head trained), and
a PEFT-format adapter folder in `final/`, loadable with `peft.PeftModel.from_pretrained`.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from lmforge.adapters.lora import inject_lora, load_adapter, save_adapter
from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, describe_parameters, seed_everything
from lmforge.core.rundir import RunDir
from lmforge.core.training_run import RunResult, scalar_metrics, start_training
from lmforge.data.classify import (
    classification_loss,
    encode_task,
    load_classification,
    split_evaluator,
    summary,
)
from lmforge.data.files import task_manifest
from lmforge.models.classifier import PEFT_BASE, load_classifier, save_peft_base, saved_labels


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    lora, train = cfg.options, cfg.train
    task = load_classification(cfg.data)

    seed_everything(train.seed)
    model, tokenizer = load_classifier(cfg.model.name, task.labels, train.seed, cfg.model.dropout)
    names = inject_lora(model, lora.target_modules, lora.r, lora.alpha, lora.dropout, lora.trainable_modules)
    say(f"LoRA r={lora.r} alpha={lora.alpha:g} on {len(names)} layers ({', '.join(lora.target_modules)})")
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

    def save(model, tokenizer, folder: Path) -> None:
        # `folder` becomes run_dir/final once written: the adapter names its base there, by absolute path
        save_peft_base(model, cfg.model.name, folder / PEFT_BASE, lora.trainable_modules)
        save_adapter(
            model,
            folder,
            lora.r,
            lora.alpha,
            lora.dropout,
            lora.target_modules,
            lora.trainable_modules,
            base_model=str(RunDir(run_dir).final.resolve() / PEFT_BASE),
        )
        tokenizer.save_pretrained(folder)

    final = t.finish(save, partial(summary, task))
    return RunResult(run_dir, scalar_metrics(final), ("accuracy", final["accuracy"]))


def load_trained(run_dir: Path, cfg: RunConfig):
    model, tokenizer = load_classifier(cfg.model.name, saved_labels(run_dir), cfg.train.seed, cfg.model.dropout)
    return load_adapter(model, run_dir / "final"), tokenizer
