"""The parts of a training run that every recipe shares, whatever its model, data and loss.

A recipe loads its data and model, then writes its loop out of these calls, so that a method's
extra work is a plain call at its place in the loop:

    t = start_training(cfg, run_dir, resume, model, tokenizer, lengths, manifest_data)
    t.evaluator = lambda: {...}                  # held-out metrics of the current model
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate(batch, micro_loss)  # forward + backward over the micro-batches
            t.optimizer_step(batch)                 # clip, optimizer and scheduler step, count the step
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)         # log, evaluate, early-stop, checkpoint
    return t.finish(save_final, summary)            # final/, final.json, report.html

The kernel knows no task, label or loss: the recipe gives the examples' token counts (`lengths`,
which order the batches), a loss per micro-batch, an evaluator, and `manifest_data`, the plain dict
manifest.json records under "data" (the sources, counts and fingerprints of what it trains on).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lmforge.config import RunConfig
from lmforge.core import checkpoint as ckpt
from lmforge.core.checkpoint import read_weights
from lmforge.core.console import progress_bar, say
from lmforge.core.loop import (
    OptimizerBatch,
    StopSignal,
    TrainState,
    advance,
    build_optimizer,
    build_scheduler,
    cast_weights,
    count_parameters,
    enable_gradient_checkpointing,
    is_due,
    make_accelerator,
    optimizer_batches,
    steps_per_epoch,
    total_steps,
    trainable_state,
    update_early_stopping,
)
from lmforge.core.processes import (
    check_sharding,
    load_whole_weights,
    shards_weights,
    whole_optimizer_state,
    whole_weights,
)
from lmforge.core.report import write_report
from lmforge.core.result import RunResult
from lmforge.core.rundir import RunDir, build_manifest, write_text_atomic
from lmforge.core.trackers import (
    check_mlflow_store,
    check_report_to,
    close_trackers,
    flat_config,
    make_trackers,
    recorded_trackers,
    send,
    start_trackers,
)
from lmforge.errors import Interrupted, UserError, shown

__all__ = ["RunResult", "TrainingRun", "open_run", "save_best", "scalar_metrics", "start_training"]

SaveFinal = Callable[[torch.nn.Module, Any, Path], None]  # (model, tokenizer, folder)
MicroLoss = Callable[[list[int]], dict[str, torch.Tensor]]  # example indices -> named losses (see `accumulate`)


@dataclass(kw_only=True)
class TrainingRun:
    cfg: RunConfig
    model: torch.nn.Module  # wrapped by Accelerate; `unwrapped` is the plain module
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    accelerator: Any
    run: RunDir
    state: TrainState
    resumed_from: Path | None  # the checkpoint this run continues from, if any
    n_steps: int
    per_epoch: int
    trainable: int
    total: int
    batches: Iterator[OptimizerBatch]
    bar: Any
    evaluator: Callable[[], dict] | None = None  # metrics of the current model on held-out data
    select_metric: str | None = None  # the metric early stopping and the best model follow (higher is better)
    metrics: dict | None = None  # the latest evaluation, reused at the end when it is of the final model
    extra_state: Callable[[], dict] | None = None  # method state saved with every checkpoint
    step_losses: dict[str, float] = field(default_factory=dict)  # the last step's named losses

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def running(self) -> bool:
        return self.state.step < self.n_steps and not self.state.stopped_early

    def accumulate(
        self, batch: OptimizerBatch, micro_loss: MicroLoss, regularizer: Callable[[], torch.Tensor] | None = None
    ) -> float:
        """Forward and backward over the step's micro-batches; returns the step's loss.

        `micro_loss(indices)` runs the model on one micro-batch (this process's share) and returns
        named losses, each already divided by the size of the whole step over all processes (its
        examples, or its tokens: whatever the loss is a mean over), so that summed over the
        micro-batches they are the step's mean and accumulation is exact. Each process's part is
        multiplied by the number of processes, since DDP averages gradients over them.
        `regularizer()` (a scalar for the whole step) is added once per step, spread evenly over the
        micro-batches. The step's value of each named loss (summed over the processes, which must each return
        the same names) is kept in `self.step_losses`. A stand-in micro-batch (this process has none of its
        examples, `optimizer_batches`) runs like the others and counts 0.
        """
        acc, step_loss = self.accelerator, 0.0
        self.step_losses = {}
        for i, micro in enumerate(batch.micro_batches):
            last = i == len(batch.micro_batches) - 1
            with nullcontext() if last else acc.no_sync(self.model), acc.autocast():
                parts = micro_loss(micro)
                if batch.stand_ins and batch.stand_ins[i]:  # forward and backward only to keep step with the others
                    parts = {name: value * 0 for name, value in parts.items()}
                loss = sum(parts.values()) * acc.num_processes
                if regularizer is not None:
                    loss = loss + regularizer() / len(batch.micro_batches)
            acc.backward(loss)
            step_loss += loss.item()
            for name, value in parts.items():
                self.step_losses[name] = self.step_losses.get(name, 0.0) + value.item()
        if acc.num_processes > 1:  # each process summed its share: the step's loss is their mean
            step_loss = acc.reduce(torch.tensor(step_loss, device=acc.device), "mean").item()
            names = sorted(self.step_losses)  # each process's share of each named loss: their sum is the step's
            summed = acc.reduce(torch.tensor([self.step_losses[n] for n in names], device=acc.device), "sum")
            self.step_losses = dict(zip(names, summed.tolist(), strict=True))
        return step_loss

    def optimizer_step(self, batch: OptimizerBatch) -> None:
        """Clip, step the optimizer and the schedule, and count the step (`state.step` += 1)."""
        if self.cfg.train.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        advance(self.state, batch, self.per_epoch)

    def evaluate(self) -> dict:
        if self.evaluator is None:
            raise RuntimeError("the recipe set no evaluator")
        return self.evaluator()

    def log(self, record: dict) -> None:
        """One line of metrics.jsonl, and its numbers to the trackers of `train.report_to` (main process only)."""
        self.run.log(record)
        send(self.accelerator, record)

    def save_checkpoint(self) -> None:
        # Every process takes part: under FSDP the optimizer state and the weights are gathered from their shards
        # (the optimizer's first: it names the model's own, sharded parameters).
        optimizer = self.optimizer
        if shards_weights(self.accelerator):
            optimizer = GatheredOptimizer(whole_optimizer_state(self.accelerator, self.model, self.optimizer))
        with whole_weights(self.accelerator, self.model) as model:
            if not self.main:
                return
            ckpt.save_checkpoint(
                self.run.checkpoints,
                self.state.step,
                trainable_state(model),
                optimizer,
                self.scheduler,
                self.state.to_dict(),
                self.cfg.train.keep_checkpoints,
                extra=self.extra_state() if self.extra_state else None,
            )

    def end_step(self, step_loss: float, started: float, stop: StopSignal, log: dict | None = None) -> None:
        """After a step: timing, the metrics line (plus `log`), evaluation, early stopping, checkpoint."""
        train, state = self.cfg.train, self.state
        state.train_seconds += time.perf_counter() - started
        state.running_loss += step_loss
        state.running_steps += 1
        epoch = round(state.step / self.per_epoch, 4)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{step_loss:.4f}", epoch=f"{epoch:.2f}")
        last = state.step == self.n_steps
        if self.main and (state.step % train.log_every == 0 or last):
            loss = state.running_loss / state.running_steps
            lr = self.scheduler.get_last_lr()[0]
            self.log({"split": "train", "step": state.step, "epoch": epoch, "loss": loss, "lr": lr, **(log or {})})
            state.running_loss, state.running_steps = 0.0, 0
        self.metrics = None
        if is_due(state.step, train.eval_every, self.per_epoch) or last:
            self.metrics = metrics = self.evaluate()
            if self.main:
                scores = scalar_metrics(metrics)
                self.log({"split": "eval", "step": state.step, "epoch": epoch, **scores})
                self.bar.write(f"step {state.step}: eval {', '.join(f'{k} {v:.4f}' for k, v in scores.items())}")
            if self.select_metric is not None:
                improved = update_early_stopping(state, metrics[self.select_metric], train.early_stopping_patience)
                if improved and train.early_stopping_patience:
                    with whole_weights(self.accelerator, self.model) as model:  # every process: gathered if sharded
                        if self.main:
                            save_best(self.run, model)
        if stop.requested or is_due(state.step, train.save_every, self.per_epoch):
            self.save_checkpoint()
        if stop.requested:
            self.bar.close()
            close_trackers(self.accelerator, "KILLED")  # --resume continues the same tracker runs
            raise Interrupted(f"{stop.requested} at step {state.step}; checkpoint saved in {self.run.checkpoints}")

    def finish(
        self,
        save_final: SaveFinal,
        summary: Callable[[dict], dict],
        report_sections: Callable[[Path], list[tuple[str, str]]] | None = None,
    ) -> dict:
        """Restore the best model if early stopping chose one, evaluate, and write final/,
        final.json (last: it marks a finished run) and report.html.

        final.json holds the scalar metrics, then `summary(final_metrics)` (the data evaluated on,
        a confusion matrix, ...), then the step counts, training time and parameter counts."""
        train, state = self.cfg.train, self.state
        self.bar.close()
        if state.stopped_early:
            patience = train.early_stopping_patience
            say(f"early stop at step {state.step}: no {self.select_metric} gain in {patience} evaluations")
        if train.early_stopping_patience and state.best_step != state.step:
            best = read_weights(self.run.checkpoints / "best.safetensors")
            load_whole_weights(self.accelerator, self.model, best)
            say(f"restored the best model (step {state.best_step}, {self.select_metric} {state.best_metric:.4f})")
            self.metrics = None
        final = self.metrics or self.evaluate()
        with whole_weights(self.accelerator, self.model) as model:  # every process: gathered if sharded
            if self.main:
                tmp = self.run.path / "final.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                save_final(model, self.tokenizer, tmp)
                shutil.rmtree(self.run.final, ignore_errors=True)
                tmp.rename(self.run.final)
        if self.main:
            self.run.write_json(
                "final.json",
                {
                    "metrics": scalar_metrics(final),
                    **summary(final),
                    "steps": state.step,
                    "best_step": state.best_step,
                    "train_seconds": round(state.train_seconds, 3),
                    "trainable_parameters": self.trainable,
                    "total_parameters": self.total,
                },
            )
            write_report(self.run.path, report_sections(self.run.path) if report_sections else None)
            send(self.accelerator, {"split": "final", "step": state.step, **scalar_metrics(final)})
        close_trackers(self.accelerator)
        self.accelerator.wait_for_everyone()  # a parent run's processes read final/ and final.json next
        return final


@dataclass
class GatheredOptimizer:
    """What checkpoint.save_checkpoint reads of the optimizer (`state_dict()`), gathered from the shards."""

    state: dict

    def state_dict(self) -> dict:
        return self.state


def scalar_metrics(metrics: dict) -> dict:
    """The numbers of an evaluation (a confusion matrix and other tables left out)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def start_training(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool,
    model: torch.nn.Module,
    tokenizer: Any,
    lengths: list[int],
    manifest_data: dict,
    *,
    phases: list[int] | None = None,
    select_metric: str | None = None,
) -> TrainingRun:
    """The optimizer, the schedule, Accelerate, the run folder (or its latest checkpoint, restored)
    and the resumable batch stream over examples of token counts `lengths`, for a model already
    loaded and adapted; call it after every input is checked, since it writes the run folder.

    `manifest_data` goes into manifest.json under "data" (JSON-serialisable). `phases` (step counts
    summing to `total_steps(len(lengths), cfg.train)`) splits the learning-rate schedule into stages,
    each with its own warmup and decay. `select_metric`: the evaluation metric early stopping and
    the best model follow (higher is better).

    `model.dtype` casts the model here, before the optimizer takes its parameters; `train.report_to` starts its
    trackers (core/trackers.py) once the run folder is written, and manifest.json records their runs."""
    train, run_dir = cfg.train, Path(run_dir)
    check_report_to(train.report_to)  # like every check here: before anything is written
    cast_weights(model, cfg.model.dtype, train.mixed_precision)
    trainable, total = count_parameters(model)
    optimizer = build_optimizer(model, train.lr, train.weight_decay, train.optimizer)
    n_steps = total_steps(len(lengths), train)
    scheduler = build_scheduler(optimizer, n_steps, train.warmup_ratio, phases, train.scheduler)
    trackers = None
    if train.report_to:  # a resumed run continues the tracker runs its manifest.json names
        recorded = recorded_trackers(run_dir / "manifest.json") if resume else {}
        tags = {"lmforge.run_dir": str(run_dir.resolve()), "lmforge.method": cfg.method, "lmforge.recipe": cfg.recipe}
        trackers = make_trackers(train.report_to, run_dir, run_dir.name, recorded, {k: v for k, v in tags.items() if v})
    accelerator = make_accelerator(train, trackers)
    check_sharding(accelerator, train, resume)
    main = accelerator.is_main_process
    if main and "mlflow" in train.report_to:
        check_mlflow_store()
    if accelerator.num_processes > 1:  # dropout differs per process; DDP broadcasts rank 0's weights
        torch.manual_seed(train.seed + accelerator.process_index)
    existed = run_dir.exists()
    run, state, resumed_from = open_run(run_dir, cfg, manifest_data, resume, model, optimizer, scheduler, write=main)
    if main and train.report_to:
        try:
            where = start_trackers(accelerator, state.step if resume else None, flat_config(cfg.to_dict()))
        except UserError:
            if not resume:  # what open_run wrote a moment ago: a failed start leaves nothing half-written
                shutil.rmtree(run.path, ignore_errors=True)
                if existed:  # an empty folder the user named stays, empty
                    run.path.mkdir()
            raise
        record_trackers(run, where)
    accelerator.wait_for_everyone()
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    batches = optimizer_batches(lengths, train, state, accelerator.process_index, accelerator.num_processes)
    bar = progress_bar(
        total=n_steps, initial=state.step, desc="train", unit="step", disable=not main, dynamic_ncols=True
    )
    return TrainingRun(
        cfg=cfg,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        accelerator=accelerator,
        run=run,
        state=state,
        resumed_from=resumed_from,
        n_steps=n_steps,
        per_epoch=steps_per_epoch(len(lengths), train),
        trainable=trainable,
        total=total,
        batches=batches,
        bar=bar,
        select_metric=select_metric,
    )


def open_run(
    run_dir: Path, cfg: RunConfig, manifest_data: dict, resume: bool, model, optimizer, scheduler, write: bool = True
):
    """Create the run folder (config.yaml, manifest.json with `manifest_data` under "data"), or
    restore the latest checkpoint of an existing one.

    Returns (RunDir, TrainState, the checkpoint restored or None). Only the main process
    (`write`) creates or changes files; the others just read the checkpoint.
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
            state = restored_state(ckpt.load_checkpoint(latest, model, optimizer, scheduler), latest / "state.json")
            say(f"resumed from {latest} (step {state.step})")
        if write:
            run.truncate_metrics(state.step)
        return run, state, latest
    if not write:
        return run, state, None
    if run.path.exists() and any(run.path.iterdir()):
        raise UserError(f"{run.path}: run folder already exists; add --resume to continue it or pick --run-dir")
    run.path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config, cfg.to_yaml())  # a crash never leaves a cut-short config.yaml
    from accelerate import PartialState  # the Accelerator's own state: this run's number of processes

    manifest = build_manifest(cfg.train.seed, manifest_data)
    run.write_json(
        "manifest.json",
        {**manifest, "recipe": cfg.recipe, "world_size": PartialState().num_processes, "trackers": {}},
    )
    return run, state, None


def record_trackers(run: RunDir, where: dict) -> None:
    """manifest.json's "trackers": where `train.report_to`'s trackers write (the MLflow and W&B run ids)."""
    manifest = json.loads(run.manifest.read_text(encoding="utf-8"))
    if manifest.get("trackers") != where:
        run.write_json("manifest.json", {**manifest, "trackers": where})


def restored_state(saved, path: Path) -> TrainState:
    """The TrainState a checkpoint's state.json holds; a crafted or foreign one (other keys, a string or a
    negative number where a count belongs) is a UserError naming the file, not a crash later in the loop."""
    import typing

    hints = typing.get_type_hints(TrainState)
    if not isinstance(saved, dict) or not set(saved) <= set(hints):
        raise UserError(f"{path}: not an lmforge training state (expected the keys {', '.join(hints)})")
    checks = {  # the type each field holds -> (what fits, what it says)
        bool: (lambda v: isinstance(v, bool), "true or false"),
        int: (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0"),
        float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    }
    for key, value in saved.items():
        optional = type(None) in typing.get_args(hints[key])
        kind = next(t for t in (bool, int, float) if t is hints[key] or t in typing.get_args(hints[key]))
        fits, expected = checks[kind]
        if not (fits(value) or (optional and value is None)):
            raise UserError(f"{path}: {key}: expected {expected}, got {shown(value)}")
    return TrainState(**saved)


def save_best(run: RunDir, model: torch.nn.Module) -> None:
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = run.checkpoints / "best.safetensors.tmp"
    save_file({k: v.cpu().contiguous() for k, v in trainable_state(model).items()}, str(tmp))
    tmp.replace(run.checkpoints / "best.safetensors")
