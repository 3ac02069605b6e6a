"""TinyBERT (Jiao et al., Findings of EMNLP 2020): transformer distillation in two stages.

- `tinybert.stage=general` (`general.py`): a base encoder teaches a fresh student on unlabeled
  text, embedding + attention + hidden-state losses only (section 3.2, "general distillation").
- `tinybert.stage=task` (this file): a finished lmforge classifier run teaches the student
  (from the general stage's output, or random) on the task's data plus augmented copies
  (Algorithm 1): the intermediate losses for the first `intermediate_share` of the steps, then
  the prediction-layer loss, each phase with its own warmup and decay and a fresh AdamW state,
  as the paper's two runs (the official code starts each phase as a new training).

The teacher is any finished classifier run: full fine-tuning, LoRA or AdaLoRA. Adapters are merged
into its weights when it is loaded (`remove_lora`): the teacher is frozen, so the merged model
computes the same function, and the attention hooks see plain query / key linears.

The task stage reads top to bottom: check the options, load the data, load the teacher, augment the
data, build the student, encode, start training, the loop (intermediate layers, then the prediction
layer), finish. A setting that leaves a phase without a step is refused before the teacher is loaded
whenever the step count does not depend on the augmentation (`train.max_steps`, or no augmentation);
otherwise right after the augmentation, still before anything is written. The losses live in
`losses.py`, pre-softmax attention scores come from hooks (`attention.py`), the augmentation from
`augment.py`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lmforge.adapters.lora import remove_lora
from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, count_parameters, describe_parameters, seed_everything, total_steps
from lmforge.core.rundir import RunDir
from lmforge.core.training_run import RunResult, scalar_metrics, start_training
from lmforge.data.classify import (
    EncodedTask,
    encode_task,
    load_classification,
    predict_logits,
    refuse_text_pairs,
    split_evaluator,
    summary,
    train_inputs,
)
from lmforge.data.files import Task, describe, task_manifest
from lmforge.errors import UserError
from lmforge.methods.tinybert.attention import AttentionScores, self_attention_layers
from lmforge.methods.tinybert.augment import cached_augment
from lmforge.methods.tinybert.losses import intermediate_losses, layer_map_for, soft_cross_entropy
from lmforge.methods.tinybert.report import SUMMARY_FILE, report_sections
from lmforge.methods.tinybert.student import Student, check_shape, new_student, shape_of, student_from
from lmforge.models.classifier import load_saved_classifier

AUGMENT_SEED = 2020  # the augmented data is the same for every student seed, and cached once


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the projections and the teacher live outside DDP's forward
        raise UserError("tinybert runs in one process (one GPU or the CPU); launch it without accelerate launch")
    if cfg.options.stage == "general":
        from lmforge.methods.tinybert.general import run_general

        return run_general(cfg, run_dir, resume)
    return run_task(cfg, run_dir, resume)


def run_task(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    from lmforge.registry import load_finished_run

    tb, train = cfg.options, cfg.train
    if not tb.teacher:
        raise UserError("tinybert.teacher: the task stage needs a finished classifier run folder as its teacher")
    general = Path(tb.init_from) / "final" if tb.init_from else None
    if general is not None and not general.is_dir():
        raise UserError(f"tinybert.init_from: {tb.init_from} has no final/ (not a finished general-stage run)")
    if tb.augment:
        refuse_text_pairs(
            cfg.data,
            "tinybert with tinybert.augment=true",
            "its augmentation (Algorithm 1) rewrites one text per example; set tinybert.augment=false",
        )
    task = load_classification(cfg.data)
    if not tb.augment or train.max_steps > 0:  # the step count is known before the teacher is loaded
        phase_steps(total_steps(len(task.train), train), tb.intermediate_share)

    _, teacher_labels, teacher, tokenizer = load_finished_run(
        Path(tb.teacher), classifier_command="run tinybert (tinybert.teacher)"
    )
    teacher = remove_lora(teacher).requires_grad_(False)  # LoRA / AdaLoRA teachers: plain linears
    try:  # before anything is written: the attention loss needs BERT-style query / key linears
        self_attention_layers(teacher)
    except ValueError as e:
        raise UserError(f"tinybert.teacher: {tb.teacher}: {e}") from None
    shape = shape_of(general) if general else tb.student
    check_shape(shape, teacher.config)
    layer_map = layer_map_for(tb, shape.layers, teacher.config.num_hidden_layers)
    if task.labels != teacher_labels:
        raise UserError(f"the task's labels {task.labels} differ from the teacher's {teacher_labels}")
    if tb.augment:
        task = augmented(task, teacher, tokenizer, tb)
        say(describe(task.train))
    phases = phase_steps(total_steps(len(task.train), train), tb.intermediate_share)

    seed_everything(train.seed)
    if general:
        student = student_from(general, teacher.config, task.labels, train.seed)
    else:
        student = new_student(teacher.config, shape, task.labels, train.seed)
    say(describe_parameters("student", student))
    data = encode_task(tokenizer, task, cfg.model.max_length)

    t = start_training(
        cfg,
        run_dir,
        resume,
        student,
        tokenizer,
        data.lengths,
        task_manifest(task),
        phases=phases,
        select_metric=train.metric,
    )
    pad_id, device, n_intermediate = tokenizer.pad_token_id, t.accelerator.device, phases[0]
    teacher.to(device)
    say(
        f"student {shape.layers} layers x {shape.hidden} hidden, layer map {layer_map}; "
        f"intermediate losses for {n_intermediate} steps, then prediction for {phases[1]}"
    )
    t.evaluator = split_evaluator(t.model, data, pad_id, train.eval_batch_size, device)
    student: Student = t.unwrapped  # the module itself, outside Accelerate's wrapper (its projections)

    with AttentionScores(student.encoder()) as student_attention, AttentionScores(teacher) as teacher_attention:

        def distillation_losses(micro: list[int], step_size: int) -> dict[str, torch.Tensor]:
            """The micro-batch's named losses, each a mean over it, weighted by its share of the step."""
            inputs = train_inputs(data, micro, pad_id, device)
            intermediate = t.state.step < n_intermediate
            with torch.no_grad():
                taught = teacher(**inputs, output_hidden_states=intermediate)
            out = t.model(**inputs, output_hidden_states=intermediate)
            teacher_scores, student_scores = teacher_attention.pop(), student_attention.pop()
            if not intermediate:  # equation 10
                losses = {"prediction": soft_cross_entropy(out.logits, taught.logits, tb.temperature)}
            else:  # equations 7-9
                losses = intermediate_losses(
                    out.hidden_states,
                    taught.hidden_states,
                    student_scores,
                    teacher_scores,
                    inputs["attention_mask"],
                    layer_map,
                    student.projections,
                )
            return {name: value * (len(micro) / step_size) for name, value in losses.items()}

        with StopSignal() as stop:
            while t.running():
                if t.state.step == n_intermediate > 0:  # the prediction phase starts as a new training
                    getattr(t.optimizer, "optimizer", t.optimizer).state.clear()
                batch, started = next(t.batches), time.perf_counter()
                loss = t.accumulate(batch, partial(distillation_losses, step_size=batch.size))
                t.optimizer_step(batch)
                t.optimizer.zero_grad(set_to_none=True)
                t.end_step(loss, started, stop, log=dict(t.step_losses))

    def save(model: Student, tok, folder: Path) -> None:
        model.save(tok, folder)
        agreed = agreement(teacher, model, data, pad_id, train.eval_batch_size, device)
        agreed.update(layer_map=layer_map, student_parameters=count_parameters(model.model)[1])
        agreed["teacher_parameters"] = count_parameters(teacher)[1]
        RunDir(run_dir).write_json(SUMMARY_FILE, agreed)
        say(f"teacher-student agreement on {task.eval.source}: {agreed['agreement']:.4f}")

    final = t.finish(save, partial(summary, task), report_sections)
    return RunResult(run_dir, scalar_metrics(final), ("accuracy", final["accuracy"]))


def phase_steps(total: int, intermediate_share: float) -> list[int]:
    """The steps of the two phases, [intermediate layers, prediction layer]. A share strictly between 0
    and 1 asks for both phases: a step count that rounds one of them to nothing is refused."""
    first = round(intermediate_share * total)
    if 0 < intermediate_share < 1 and not 0 < first < total:
        empty = "intermediate-layer" if first == 0 else "prediction-layer"
        raise UserError(
            f"tinybert.intermediate_share: {intermediate_share:g} of {total} steps leaves the {empty} phase no "
            "step; train longer (train.max_steps, train.epochs) or set the share to 0 or 1 to skip that phase"
        )
    return [first, total - first]


def augmented(task: Task, teacher, tokenizer, tb) -> Task:
    """The task with augmented copies of its training examples after the originals (Algorithm 1)."""
    embeddings = teacher.get_input_embeddings().weight.detach().cpu()
    texts, labels = cached_augment(
        task.train.texts,
        task.train.labels,
        tb.teacher,
        embeddings,
        tokenizer.get_vocab(),
        tb.augment_copies,
        tb.augment_prob,
        tb.augment_candidates,
        AUGMENT_SEED,
    )
    source = f"{task.train.source} + {tb.augment_copies} augmented copies each"
    return dataclasses.replace(task, train=dataclasses.replace(task.train, texts=texts, labels=labels, source=source))


def agreement(teacher, student: Student, data: EncodedTask, pad_id: int, batch_size: int, device) -> dict:
    """Teacher and student predictions on the evaluation data: accuracies and how often they agree."""
    taught = predict_logits(teacher, data.eval_ids, pad_id, batch_size, device, type_ids=data.eval_type_ids).argmax(-1)
    learned = predict_logits(student, data.eval_ids, pad_id, batch_size, device, type_ids=data.eval_type_ids).argmax(-1)
    truth = np.array(data.eval_labels)
    return {
        "agreement": float((taught == learned).mean()),
        "teacher_accuracy": float((taught == truth).mean()),
        "student_accuracy": float((learned == truth).mean()),
        "n_examples": len(truth),
    }


def load_trained(run_dir: Path, cfg: RunConfig):
    return load_saved_classifier(run_dir / "final")
