"""TinyBERT's general distillation (Jiao et al. 2020, section 3.2): a base encoder teaches a fresh
student on unlabeled general-domain text, with the intermediate losses only (embeddings,
attention scores and hidden states, equations 7-9); no labels, no prediction layer.

The loop is written out here. It shares the classifier loop's mechanics (data order, resumable
batch stream, optimizer, schedule, atomic checkpoints, signals) but not its evaluation: progress
is the distillation loss on `tinybert.held_out` passages kept out of training. `final/` holds the
student encoder and its projections, which a task-stage run starts from (`tinybert.init_from`).
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import torch

from lmforge.config import RunConfig
from lmforge.core import checkpoint as ckpt
from lmforge.core.console import progress_bar, say
from lmforge.core.loop import (
    StopSignal,
    advance,
    build_optimizer,
    build_scheduler,
    count_parameters,
    is_due,
    make_accelerator,
    optimizer_batches,
    seed_everything,
    steps_per_epoch,
    total_steps,
    trainable_state,
)
from lmforge.core.report import write_report
from lmforge.core.training_run import RunResult, open_run
from lmforge.data.classify import collate, encode
from lmforge.data.corpus import load_corpus
from lmforge.data.files import Examples, manifest_entry
from lmforge.errors import Interrupted, UserError
from lmforge.methods.tinybert.attention import AttentionScores
from lmforge.methods.tinybert.losses import intermediate_losses, layer_map_for
from lmforge.methods.tinybert.report import report_sections
from lmforge.methods.tinybert.student import Student, new_student
from lmforge.models.classifier import load_encoder

HELD_OUT_SEED = 2024  # which passages are held out does not depend on the run's seed


def split_corpus(passages: list[str], held_out: int) -> tuple[list[str], list[str]]:
    if len(passages) <= held_out:
        raise UserError(f"corpus: {len(passages)} passages, not more than tinybert.held_out ({held_out})")
    order = list(range(len(passages)))
    random.Random(HELD_OUT_SEED).shuffle(order)
    kept = set(order[:held_out])
    return [p for i, p in enumerate(passages) if i not in kept], [passages[i] for i in sorted(kept)]


def run_general(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    tb, train = cfg.options, cfg.train
    if train.early_stopping_patience:
        raise UserError("train.early_stopping_patience: not available in the general stage (no labels)")
    train_texts, held_texts = split_corpus(load_corpus(tb.corpus), tb.held_out)
    held_source = f"{tb.corpus} (held out)"
    manifest = {  # manifest.json records the passages as a run's training and evaluation data (no labels)
        "train": manifest_entry(Examples(train_texts, [""] * len(train_texts), tb.corpus)),
        "eval": manifest_entry(Examples(held_texts, [""] * len(held_texts), held_source)),
    }
    say(f"{tb.corpus}: {len(train_texts):,} passages for training, {len(held_texts):,} held out")
    teacher, tokenizer = load_encoder(tb.teacher or cfg.model.name)
    teacher.requires_grad_(False).eval()
    layer_map = layer_map_for(tb, tb.student.layers, teacher.config.num_hidden_layers)
    seed_everything(train.seed)
    student = new_student(teacher.config, tb.student, None, train.seed)
    n_params = count_parameters(student.model)[1]
    say(f"student {n_params:,} parameters (teacher {count_parameters(teacher)[1]:,}); layer map {layer_map}")
    train_ids = encode(tokenizer, train_texts, cfg.model.max_length)
    held_ids = encode(tokenizer, held_texts, cfg.model.max_length)

    optimizer = build_optimizer(student, train.lr, train.weight_decay, train.optimizer)
    n_steps, per_epoch = total_steps(len(train_ids), train), steps_per_epoch(len(train_ids), train)
    scheduler = build_scheduler(optimizer, n_steps, train.warmup_ratio, shape=train.scheduler)
    accelerator = make_accelerator(train)
    run, state, _ = open_run(run_dir, cfg, manifest, resume, student, optimizer, scheduler)
    student, optimizer = accelerator.prepare(student, optimizer)
    teacher.to(accelerator.device)
    pad = tokenizer.pad_token_id
    unwrapped: Student = accelerator.unwrap_model(student)

    with AttentionScores(unwrapped.encoder()) as student_attention, AttentionScores(teacher) as teacher_attention:

        def losses_of(ids: list[list[int]]) -> dict[str, torch.Tensor]:
            inputs = collate(ids, pad, accelerator.device)
            with torch.no_grad():
                taught = teacher(**inputs, output_hidden_states=True)
            out = student(**inputs, output_hidden_states=True)
            return intermediate_losses(
                out.hidden_states,
                taught.hidden_states,
                student_attention.pop(),
                teacher_attention.pop(),
                inputs["attention_mask"],
                layer_map,
                unwrapped.projections,
            )

        @torch.no_grad()
        def held_out_loss() -> float:
            student.eval()
            size, total = train.eval_batch_size, 0.0
            for start in range(0, len(held_ids), size):
                chunk = held_ids[start : start + size]
                total += sum(losses_of(chunk).values()).item() * len(chunk)
            student.train()
            return total / len(held_ids)

        student.train()
        batches = optimizer_batches([len(x) for x in train_ids], train, state)
        bar = progress_bar(
            total=n_steps, initial=state.step, desc="general distillation", unit="step", dynamic_ncols=True
        )
        loss = None
        with StopSignal() as stop:
            while state.step < n_steps:
                batch, started = next(batches), time.perf_counter()
                parts: dict[str, float] = {}
                for micro in batch.micro_batches:
                    with accelerator.autocast():
                        named = losses_of([train_ids[j] for j in micro])
                        step_loss = sum(named.values()) * len(micro) / batch.size
                    accelerator.backward(step_loss)
                    for name, value in named.items():
                        parts[name] = parts.get(name, 0.0) + value.item() * len(micro) / batch.size
                if train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(student.parameters(), train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                advance(state, batch, per_epoch)
                state.train_seconds += time.perf_counter() - started
                total = sum(parts.values())
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
                if state.step % train.log_every == 0 or state.step == n_steps:
                    lr = scheduler.get_last_lr()[0]
                    run.log({"split": "train", "step": state.step, "loss": total, "lr": lr, **parts})
                if is_due(state.step, train.eval_every, per_epoch) or state.step == n_steps:
                    loss = held_out_loss()
                    run.log({"split": "eval", "step": state.step, "loss": loss})
                    bar.write(f"step {state.step}: held-out distillation loss {loss:.4f}")
                if stop.requested or is_due(state.step, train.save_every, per_epoch):
                    ckpt.save_checkpoint(
                        run.checkpoints,
                        state.step,
                        trainable_state(unwrapped),
                        optimizer,
                        scheduler,
                        state.to_dict(),
                        train.keep_checkpoints,
                    )
                if stop.requested:
                    bar.close()
                    raise Interrupted(f"{stop.requested} at step {state.step}; checkpoint saved in {run.checkpoints}")
        bar.close()
        final_loss = loss if loss is not None else held_out_loss()

    tmp = run.path / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped.save(tokenizer, tmp)
    shutil.rmtree(run.final, ignore_errors=True)
    tmp.rename(run.final)
    run.write_json(
        "final.json",
        {
            "metrics": {"held_out_loss": final_loss},
            "labels": [],
            "eval_data": held_source,
            "n_examples": len(held_ids),
            "steps": state.step,
            "train_seconds": round(state.train_seconds, 3),
            "student_parameters": n_params,
            "layer_map": layer_map,
        },
    )
    write_report(run.path, report_sections(run.path))
    say(f"general distillation: held-out loss {final_loss:.4f}; student in {run.final}")
    return RunResult(run_dir, {"held_out_loss": final_loss}, ("held_out_loss", final_loss))
