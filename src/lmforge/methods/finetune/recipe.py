"""Fine-tune a sequence classifier: setup -> train -> evaluate -> save.

`train_classifier` is the whole loop, written out; full fine-tuning calls it as is, and LoRA calls
it with a function that adapts the model before training and one that saves the adapter.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lmforge.config import RunConfig
from lmforge.core import checkpoint as ckpt
from lmforge.core.classify import collate, encode, evaluate, loss_sum
from lmforge.core.console import say
from lmforge.core.data import Task, describe, load_task
from lmforge.core.loop import (
    StopSignal,
    TrainState,
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
    update_early_stopping,
)
from lmforge.core.models import load_classifier, load_saved_classifier
from lmforge.core.report import write_report
from lmforge.core.rundir import RunDir, build_manifest, fingerprint
from lmforge.errors import Interrupted, UserError


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> dict:
    freeze = cfg.options.freeze_embeddings

    def adapt(model) -> None:
        if freeze:
            model.get_input_embeddings().weight.requires_grad_(False)

    return train_classifier(cfg, run_dir, resume, adapt, save_pretrained)


def save_pretrained(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_trained(run_dir: Path, cfg: RunConfig, labels: list[str]):
    return load_saved_classifier(run_dir / "final")


def train_classifier(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool,
    adapt: Callable[[torch.nn.Module], None],
    save_final: Callable[[torch.nn.Module, object, Path], None],
) -> dict:
    train = cfg.train
    # ---- setup: every input is checked before anything is written ----
    task = load_task(
        cfg.data.train,
        cfg.data.eval,
        cfg.data.text_column,
        cfg.data.label_column,
        cfg.data.max_train_examples,
        cfg.data.max_eval_examples,
    )
    say(describe(task.train))
    say(describe(task.eval))
    seed_everything(train.seed)
    model, tokenizer = load_classifier(cfg.model.name, task.labels, train.seed, cfg.model.dropout)
    adapt(model)
    trainable, total = count_parameters(model)
    say(f"{cfg.model.name}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")
    train_ids = encode(tokenizer, task.train.texts, cfg.model.max_length)
    eval_ids = encode(tokenizer, task.eval.texts, cfg.model.max_length)
    label_index = {label: i for i, label in enumerate(task.labels)}
    train_labels = [label_index[x] for x in task.train.labels]
    eval_labels = [label_index[x] for x in task.eval.labels]

    optimizer = build_optimizer(model, train.lr, train.weight_decay)
    n_steps = total_steps(len(train_ids), train)
    per_epoch = steps_per_epoch(len(train_ids), train)
    scheduler = build_scheduler(optimizer, n_steps, train.warmup_ratio)
    accelerator = make_accelerator(train)
    main = accelerator.is_main_process
    if accelerator.num_processes > 1:  # dropout differs per process; DDP broadcasts rank 0's weights
        torch.manual_seed(train.seed + accelerator.process_index)
    run, state = open_run(run_dir, cfg, task, resume, model, optimizer, scheduler, write=main)
    accelerator.wait_for_everyone()
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id

    def run_eval() -> dict:
        return evaluate(
            model, eval_ids, eval_labels, len(task.labels), pad_id, train.eval_batch_size, accelerator.device
        )

    def save_checkpoint() -> None:
        if main:
            ckpt.save_checkpoint(
                run.checkpoints,
                state.step,
                trainable_state(accelerator.unwrap_model(model)),
                optimizer,
                scheduler,
                state.to_dict(),
                train.keep_checkpoints,
            )

    # ---- train ----
    metrics: dict | None = None  # the latest evaluation, reused at the end when it is of the final model
    model.train()
    batches = optimizer_batches(
        [len(x) for x in train_ids], train, state, accelerator.process_index, accelerator.num_processes
    )
    bar = tqdm(total=n_steps, initial=state.step, desc="train", unit="step", disable=not main, dynamic_ncols=True)
    with StopSignal() as stop:
        while state.step < n_steps and not state.stopped_early:
            batch = next(batches)
            started = time.perf_counter()
            step_loss = 0.0
            for i, micro in enumerate(batch.micro_batches):
                inputs = collate([train_ids[j] for j in micro], pad_id, accelerator.device)
                labels = torch.tensor([train_labels[j] for j in micro], device=accelerator.device)
                last = i == len(batch.micro_batches) - 1
                with nullcontext() if last else accelerator.no_sync(model), accelerator.autocast():
                    logits = model(**inputs).logits  # (B, C)
                    # Summed loss over the whole optimizer step's examples: exact under accumulation.
                    loss = loss_sum(logits, labels) * accelerator.num_processes / batch.size
                accelerator.backward(loss)
                step_loss += loss.item()
            if train.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.num_processes > 1:  # each process summed its share: the step's loss is their mean
                step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean").item()
            advance(state, batch, per_epoch)
            state.train_seconds += time.perf_counter() - started
            state.running_loss += step_loss
            state.running_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", epoch=f"{state.step / per_epoch:.2f}")

            if main and (state.step % train.log_every == 0 or state.step == n_steps):
                run.log(
                    {
                        "split": "train",
                        "step": state.step,
                        "epoch": round(state.step / per_epoch, 4),
                        "loss": state.running_loss / state.running_steps,
                        "lr": scheduler.get_last_lr()[0],
                    }
                )
                state.running_loss, state.running_steps = 0.0, 0
            metrics = None
            if is_due(state.step, train.eval_every, per_epoch) or state.step == n_steps:
                metrics = run_eval()
                if main:
                    run.log(
                        {
                            "split": "eval",
                            "step": state.step,
                            "epoch": round(state.step / per_epoch, 4),
                            **{k: v for k, v in metrics.items() if k != "confusion"},
                        }
                    )
                    bar.write(
                        f"step {state.step}: eval loss {metrics['loss']:.4f}, "
                        f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
                    )
                improved = update_early_stopping(state, metrics[train.metric], train.early_stopping_patience)
                if improved and train.early_stopping_patience and main:
                    save_best(run, accelerator.unwrap_model(model))
            if stop.requested or is_due(state.step, train.save_every, per_epoch):
                save_checkpoint()
            if stop.requested:
                bar.close()
                raise Interrupted(f"{stop.requested} at step {state.step}; checkpoint saved in {run.checkpoints}")
    bar.close()
    if state.stopped_early:
        say(f"early stop at step {state.step}: no {train.metric} gain in {train.early_stopping_patience} evaluations")

    # ---- evaluate and save ----
    model = accelerator.unwrap_model(model)
    if train.early_stopping_patience and state.best_step != state.step:
        model.load_state_dict(load_file(str(run.checkpoints / "best.safetensors")), strict=False)
        say(f"restored the best model (step {state.best_step}, {train.metric} {state.best_metric:.4f})")
        metrics = None
    final = metrics or run_eval()
    if main:  # final/ first, then final.json: final.json marks a finished run
        tmp = run.path / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_final(model, tokenizer, tmp)
        shutil.rmtree(run.final, ignore_errors=True)
        tmp.rename(run.final)
        run.write_json(
            "final.json",
            {
                "metrics": {k: v for k, v in final.items() if k != "confusion"},
                "labels": task.labels,
                "confusion": final["confusion"],
                "eval_data": task.eval.source,
                "n_examples": len(task.eval),
                "steps": state.step,
                "best_step": state.best_step,
                "train_seconds": round(state.train_seconds, 3),
                "trainable_parameters": trainable,
                "total_parameters": total,
            },
        )
        write_report(run.path)
    return final


def open_run(run_dir: Path, cfg: RunConfig, task: Task, resume: bool, model, optimizer, scheduler, write: bool = True):
    """Create the run folder, or restore the latest checkpoint of an existing one.

    Only the main process (`write`) creates or changes files; the others just read the checkpoint.
    """
    run = RunDir(run_dir)
    state = TrainState()
    if resume:
        if (run.path / "final.json").exists():
            raise UserError(f"{run.path}: this run already finished; nothing to resume")
        if write:
            ckpt.remove_partial(run.checkpoints)
        latest = ckpt.latest_checkpoint(run.checkpoints)
        if latest is None:
            say(f"{run.path}: no checkpoint yet; starting from step 0")
        else:
            state = TrainState(**ckpt.load_checkpoint(latest, model, optimizer, scheduler))
            say(f"resumed from {latest} (step {state.step})")
        if write:
            run.truncate_metrics(state.step)
        return run, state
    if not write:
        return run, state
    if run.path.exists() and any(run.path.iterdir()):
        raise UserError(f"{run.path}: run folder already exists; add --resume to continue it or pick --run-dir")
    run.path.mkdir(parents=True, exist_ok=True)
    run.config.write_text(cfg.to_yaml())
    data = {
        split: {
            "source": ex.source,
            "examples": len(ex),
            "skipped": ex.skipped,
            "sha256_16": fingerprint(ex.texts, ex.labels),
        }
        for split, ex in (("train", task.train), ("eval", task.eval))
    }
    run.write_json("manifest.json", build_manifest(cfg.train.seed, data))
    return run, state


def save_best(run: RunDir, model: torch.nn.Module) -> None:
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = run.checkpoints / "best.safetensors.tmp"
    save_file({k: v.cpu().contiguous() for k, v in trainable_state(model).items()}, str(tmp))
    tmp.replace(run.checkpoints / "best.safetensors")
