"""TEMPORARY: the old classifier run, kept over `start_training` only until K-BERT and TinyBERT
call the plain functions of data/classify.py themselves; then this file goes (it imports data/ and
models/, which the kernel must not). New code: see methods/finetune/recipe.py.

The parts of a classifier training run that every classification recipe shares.

A recipe writes its own loop out of these calls (the generic ones are `TrainingRun`'s, in
core/training_run.py), so that a method's extra work (AdaLoRA's allocator, a regulariser) is a
plain call at its place in the loop:

    t = start_classifier_run(cfg, run_dir, resume, adapt)
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate_gradients(batch)    # forward + backward over the micro-batches
            t.optimizer_step(batch)                 # clip, optimizer and scheduler step, count the step
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)         # log, evaluate, early-stop, checkpoint
    return t.finish(save_final)                     # final/, final.json, report.html
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from lmforge.config import RunConfig
from lmforge.core import training_run
from lmforge.core.console import say
from lmforge.core.loop import OptimizerBatch, count_parameters, seed_everything, total_steps
from lmforge.core.training_run import SaveFinal, TrainingRun, save_best, start_training
from lmforge.data.classify import collate, encode, evaluate, loss_sum
from lmforge.data.files import Task, describe, load_task, task_manifest
from lmforge.models.classifier import load_classifier

__all__ = ["Adapt", "ClassifierRun", "EncodeExamples", "SaveFinal", "open_run", "save_best", "start_classifier_run"]

Adapt = Callable[[torch.nn.Module], None]  # changes the freshly loaded model in place (adapters, freezing)
BuildModel = Callable[[list[str], int], tuple[torch.nn.Module, Any]]  # (labels, seed) -> (model, tokenizer)
# (model, tokenizer, task) -> (train ids, eval ids, extra fields of the run class): inputs other than plain token ids
EncodeExamples = Callable[[torch.nn.Module, Any, Task], tuple[list[list[int]], list[list[int]], dict[str, Any]]]
LossFn = Callable[[dict, torch.Tensor], dict[str, torch.Tensor]]  # (inputs, labels) -> named mean losses


@dataclass(kw_only=True)
class ClassifierRun(TrainingRun):
    task: Task
    train_ids: list[list[int]]
    train_labels: list[int]
    eval_ids: list[list[int]]
    eval_labels: list[int]

    def accumulate_gradients(
        self,
        batch: OptimizerBatch,
        regularizer: Callable[[], torch.Tensor] | None = None,
        loss_fn: LossFn | None = None,
    ) -> float:
        """Forward and backward over the step's micro-batches; returns the step's loss.

        `loss_fn(inputs, labels)` gives named losses, each a mean over the micro-batch (default:
        {"loss": cross-entropy}); they are summed, weighted by the micro-batch's share of the
        step's examples, so accumulation is exact. `regularizer()` (a scalar for the whole step)
        is added once per step, spread evenly over the micro-batches. The step's value of each
        named loss is kept in `self.step_losses` for logging.
        """
        device, pad_id = self.accelerator.device, self.tokenizer.pad_token_id

        def micro_loss(micro: list[int]) -> dict[str, torch.Tensor]:
            inputs = collate([self.train_ids[j] for j in micro], pad_id, device)
            labels = torch.tensor([self.train_labels[j] for j in micro], device=device)
            if loss_fn is None:
                logits = self.model(**inputs).logits  # (B, C)
                return {"loss": loss_sum(logits, labels) / batch.size}
            return {name: value * (len(micro) / batch.size) for name, value in loss_fn(inputs, labels).items()}

        return self.accumulate(batch, micro_loss, regularizer)

    def evaluate(self) -> dict:
        return evaluate(
            self.model,
            self.eval_ids,
            self.eval_labels,
            len(self.task.labels),
            self.tokenizer.pad_token_id,
            self.cfg.train.eval_batch_size,
            self.accelerator.device,
        )

    def finish(
        self,
        save_final: SaveFinal,
        report_sections: Callable[[Path], list[tuple[str, str]]] | None = None,
    ) -> dict:
        """Restore the best model if early stopping chose one, evaluate, and write final/,
        final.json (last: it marks a finished run) and report.html."""

        def summary(final: dict) -> dict:
            return {
                "labels": self.task.labels,
                "confusion": final["confusion"],
                "eval_data": self.task.eval.source,
                "n_examples": len(self.task.eval),
            }

        return super().finish(save_final, summary, report_sections)


def start_classifier_run(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool,
    adapt: Adapt,
    check_steps: Callable[[int], None] | None = None,
    build_model: BuildModel | None = None,
    prepare_task: Callable[[Task], Task] | None = None,
    phases: Callable[[int], list[int]] | None = None,
    encode_examples: EncodeExamples | None = None,
    run_class: type[ClassifierRun] = ClassifierRun,
) -> ClassifierRun:
    """Load and check the data, build and adapt the model, the optimizer and the schedule, and
    create the run folder (or restore its latest checkpoint). Every input is checked before
    anything is written.

    Optional, for methods that need them: `check_steps(total_steps)` refuses a run too short for
    the method; `build_model(labels, seed)` replaces `load_classifier(model.name)`; `prepare_task`
    changes the loaded data (augmentation); `phases(total_steps)` splits the learning-rate schedule
    into stages, each with its own warmup and decay; `encode_examples(model, tokenizer, task)` builds
    inputs other than the tokenizer's ids (sentence trees), returning the ids that order the batches by
    length and the extra fields `run_class`, a ClassifierRun subclass, needs to collate them."""
    train = cfg.train
    data = cfg.data
    task = load_task(
        data.train, data.eval, data.text_column, data.label_column, data.max_train_examples, data.max_eval_examples
    )
    if prepare_task is not None:
        task = prepare_task(task)
    say(describe(task.train))
    say(describe(task.eval))
    seed_everything(train.seed)
    if build_model is not None:
        model, tokenizer = build_model(task.labels, train.seed)
    else:
        model, tokenizer = load_classifier(cfg.model.name, task.labels, train.seed, cfg.model.dropout)
    adapt(model)
    trainable, total = count_parameters(model)
    say(f"{cfg.model.name}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")
    if encode_examples is None:
        train_ids = encode(tokenizer, task.train.texts, cfg.model.max_length)
        eval_ids = encode(tokenizer, task.eval.texts, cfg.model.max_length)
        extra: dict[str, Any] = {}
    else:
        train_ids, eval_ids, extra = encode_examples(model, tokenizer, task)
    label_index = {label: i for i, label in enumerate(task.labels)}

    lengths = [len(x) for x in train_ids]
    n_steps = total_steps(len(lengths), train)
    if check_steps is not None:
        check_steps(n_steps)
    t = start_training(
        cfg,
        run_dir,
        resume,
        model,
        tokenizer,
        lengths,
        task_manifest(task),
        phases=phases(n_steps) if phases else None,
        select_metric=train.metric,
    )
    return run_class(
        **{f.name: getattr(t, f.name) for f in fields(TrainingRun)},
        task=task,
        train_ids=train_ids,
        train_labels=[label_index[x] for x in task.train.labels],
        eval_ids=eval_ids,
        eval_labels=[label_index[x] for x in task.eval.labels],
        **extra,
    )


def open_run(run_dir: Path, cfg: RunConfig, data, resume: bool, model, optimizer, scheduler, write: bool = True):
    """`training_run.open_run`, taking a Task (or the manifest's dict) as the data to record."""
    manifest_data = task_manifest(data) if isinstance(data, Task) else data
    return training_run.open_run(run_dir, cfg, manifest_data, resume, model, optimizer, scheduler, write)
