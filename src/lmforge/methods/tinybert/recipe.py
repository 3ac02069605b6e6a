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

The loop is written out below; the losses live in `losses.py`, pre-softmax attention scores come
from hooks (`attention.py`), the augmentation from `augment.py`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.adapters.lora import remove_lora
from lmforge.config import RunConfig
from lmforge.core.classifier_run import start_classifier_run
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, count_parameters
from lmforge.core.rundir import RunDir
from lmforge.data.classify import predict_logits
from lmforge.data.files import Task
from lmforge.errors import UserError
from lmforge.methods.tinybert.attention import AttentionScores, self_attention_layers
from lmforge.methods.tinybert.augment import cached_augment
from lmforge.methods.tinybert.losses import intermediate_losses, layer_map_for, soft_cross_entropy
from lmforge.methods.tinybert.report import SUMMARY_FILE, report_sections
from lmforge.methods.tinybert.student import Student, check_shape, new_student, shape_of, student_from
from lmforge.models.classifier import load_saved_classifier

AUGMENT_SEED = 2020  # the augmented data is the same for every student seed, and cached once


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> dict:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the projections and the teacher live outside DDP's forward
        raise UserError("tinybert runs in one process (one GPU or the CPU); launch it without accelerate launch")
    if cfg.options.stage == "general":
        from lmforge.methods.tinybert.general import run_general

        return run_general(cfg, run_dir, resume)
    return run_task(cfg, run_dir, resume)


def run_task(cfg: RunConfig, run_dir: Path, resume: bool) -> dict:
    from lmforge.registry import load_finished_run

    tb = cfg.options
    if not tb.teacher:
        raise UserError("tinybert.teacher: the task stage needs a finished classifier run folder as its teacher")
    _, teacher_labels, teacher, tokenizer = load_finished_run(
        Path(tb.teacher), classifier_command="run tinybert (tinybert.teacher)"
    )
    teacher = remove_lora(teacher).requires_grad_(False)  # LoRA / AdaLoRA teachers: plain linears
    try:  # before anything is written: the attention loss needs BERT-style query / key linears
        self_attention_layers(teacher)
    except ValueError as e:
        raise UserError(f"tinybert.teacher: {tb.teacher}: {e}") from None
    general = Path(tb.init_from) / "final" if tb.init_from else None
    if general is not None and not general.is_dir():
        raise UserError(f"tinybert.init_from: {tb.init_from} has no final/ (not a finished general-stage run)")
    shape = shape_of(general) if general else tb.student
    check_shape(shape, teacher.config)
    layer_map = layer_map_for(tb, shape.layers, teacher.config.num_hidden_layers)

    def build(labels: list[str], seed: int):
        if labels != teacher_labels:
            raise UserError(f"the task's labels {labels} differ from the teacher's {teacher_labels}")
        if general:
            return student_from(general, teacher.config, labels, seed), tokenizer
        return new_student(teacher.config, shape, labels, seed), tokenizer

    def augment(task: Task) -> Task:
        if not tb.augment:
            return task
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
        return dataclasses.replace(
            task, train=dataclasses.replace(task.train, texts=texts, labels=labels, source=source)
        )

    def phases(total: int) -> list[int]:
        first = round(tb.intermediate_share * total)
        return [first, total - first]

    t = start_classifier_run(cfg, run_dir, resume, lambda model: None, None, build, augment, phases)
    n_intermediate = phases(t.n_steps)[0]
    teacher.to(t.accelerator.device)
    say(
        f"student {shape.layers} layers x {shape.hidden} hidden, layer map {layer_map}; "
        f"intermediate losses for {n_intermediate} steps, then prediction for {t.n_steps - n_intermediate}"
    )
    student: Student = t.unwrapped

    with AttentionScores(student.encoder()) as student_attention, AttentionScores(teacher) as teacher_attention:

        def distillation_losses(inputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            intermediate = t.state.step < n_intermediate
            with torch.no_grad():
                taught = teacher(**inputs, output_hidden_states=intermediate)
            out = t.model(**inputs, output_hidden_states=intermediate)
            teacher_scores, student_scores = teacher_attention.pop(), student_attention.pop()
            if not intermediate:  # equation 10
                return {"prediction": soft_cross_entropy(out.logits, taught.logits, tb.temperature)}
            return intermediate_losses(  # equations 7-9
                out.hidden_states,
                taught.hidden_states,
                student_scores,
                teacher_scores,
                inputs["attention_mask"],
                layer_map,
                student.projections,
            )

        with StopSignal() as stop:
            while t.running():
                if t.state.step == n_intermediate > 0:  # the prediction phase starts as a new training
                    getattr(t.optimizer, "optimizer", t.optimizer).state.clear()
                batch, started = next(t.batches), time.perf_counter()
                loss = t.accumulate_gradients(batch, loss_fn=distillation_losses)
                t.optimizer_step(batch)
                t.optimizer.zero_grad(set_to_none=True)
                t.end_step(loss, started, stop, log=dict(t.step_losses))

    def save(model: Student, tok, folder: Path) -> None:
        model.save(tok, folder)
        summary = agreement(teacher, model, t)
        summary.update(layer_map=layer_map, student_parameters=count_parameters(model.model)[1])
        summary["teacher_parameters"] = count_parameters(teacher)[1]
        RunDir(run_dir).write_json(SUMMARY_FILE, summary)
        say(f"teacher-student agreement on {t.task.eval.source}: {summary['agreement']:.4f}")

    return t.finish(save, report_sections)


def agreement(teacher, student: Student, t) -> dict:
    """Teacher and student predictions on the evaluation data: accuracies and how often they agree."""
    pad, device, size = t.tokenizer.pad_token_id, t.accelerator.device, t.cfg.train.eval_batch_size
    taught = predict_logits(teacher, t.eval_ids, pad, size, device).argmax(-1)
    learned = predict_logits(student, t.eval_ids, pad, size, device).argmax(-1)
    truth = np.array(t.eval_labels)
    return {
        "agreement": float((taught == learned).mean()),
        "teacher_accuracy": float((taught == truth).mean()),
        "student_accuracy": float((learned == truth).mean()),
        "n_examples": len(truth),
    }


def load_trained(run_dir: Path, cfg: RunConfig, labels: list[str]):
    return load_saved_classifier(run_dir / "final")
