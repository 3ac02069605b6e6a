"""AdaLoRA fine-tuning of a sequence classifier (Zhang et al., ICLR 2023, Algorithm 1).

The loop is LoRA's with two additions, each at its place:
- the orthogonal regulariser gamma * R(P, Q) (equations 4-5) joins the training loss;
- after `optimizer.step()` and before the gradients are zeroed, the allocator scores every
  triplet from this step's gradients and masks the budget down to b(t) (equations 6-12).

At the end the adapter must keep exactly the schedule's final budget b(T) (the allocator's final
pattern is re-applied after every step of the final phase and once more before saving), and
`final/` gets the adapter trimmed to its final ranks in PEFT's format, and `adalora.json` keeps
the final ranks and the budget history for the report's heat map.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from lmforge.adapters.lora import inject_adapters
from lmforge.config import RunConfig
from lmforge.core.checkpoint import restore_extra
from lmforge.core.console import say
from lmforge.core.loop import StopSignal, describe_parameters, seed_everything, total_steps
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
from lmforge.errors import UserError
from lmforge.methods.adalora.adapter import load_adalora, save_adalora
from lmforge.methods.adalora.allocator import RankAllocator, check_schedule
from lmforge.methods.adalora.layers import SVDLinear, orthogonal_penalty, svd_layers
from lmforge.methods.adalora.report import ALLOCATION_FILE, report_sections
from lmforge.models.classifier import PEFT_BASE, load_classifier, save_peft_base, saved_labels


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    ada, train = cfg.options, cfg.train
    task = load_classification(cfg.data)
    n_steps = total_steps(len(task.train), train)
    check_options(cfg, n_steps)  # before the model loads: a bad schedule is refused in a second

    seed_everything(train.seed)
    model, tokenizer = load_classifier(cfg.model.name, task.labels, train.seed, cfg.model.dropout)
    names = inject_adapters(
        model, ada.target_modules, lambda name, base: SVDLinear(base, ada.init_r, ada.lora_alpha, ada.lora_dropout),
        ada.trainable_modules,
    )  # fmt: skip
    say(
        f"AdaLoRA on {len(names)} matrices ({', '.join(ada.target_modules)}): rank {ada.init_r} each, "
        f"budget {ada.init_r * len(names)} -> {ada.target_r * len(names)} triplets"
    )
    say(describe_parameters(cfg.model.name, model))
    data = encode_task(tokenizer, task, cfg.model.max_length)

    t = start_training(
        cfg, run_dir, resume, model, tokenizer, data.lengths, task_manifest(task), select_metric=train.metric
    )
    pad_id, device = tokenizer.pad_token_id, t.accelerator.device
    t.evaluator = split_evaluator(t.model, data, pad_id, train.eval_batch_size, device)
    layers = svd_layers(t.unwrapped)
    allocator = RankAllocator(
        layers, ada.init_r, ada.target_r, ada.tinit, ada.tfinal, ada.deltaT, ada.beta1, ada.beta2, t.n_steps
    )
    if t.resumed_from is not None:
        restore_extra(t.resumed_from, allocator.load_state_dict)
    t.extra_state = allocator.state_dict  # the importance averages travel with every checkpoint

    def regularizer():  # gamma * R(P, Q), equations 4-5, once per step
        return ada.orth_reg_weight * orthogonal_penalty(layers.values(), ada.orth_reg_form)

    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            micro_loss = partial(classification_loss, t.model, data, step_size=batch.size, pad_id=pad_id, device=device)
            loss = t.accumulate(batch, micro_loss, regularizer if ada.orth_reg_weight > 0 else None)
            t.optimizer_step(batch)
            # The allocator reads this step's gradients: after optimizer.step(), before zero_grad.
            budget = allocator.step(t.state.step, update_scores=not t.accelerator.optimizer_step_was_skipped)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop, log={"budget": budget})
    allocator.apply_mask()  # the final pattern, whatever the last optimizer step revived
    allocator.check_moved()  # exactly b(T) triplets kept, before anything is saved

    def save(model, tokenizer, folder: Path) -> None:
        allocator.apply_mask()
        # `folder` becomes run_dir/final once written: the adapter names its base there, by absolute path
        save_peft_base(model, cfg.model.name, folder / PEFT_BASE, ada.trainable_modules)
        base = RunDir(run_dir).final.resolve() / PEFT_BASE
        ranks = save_adalora(model, folder, ada, t.n_steps, base_model=str(base))
        tokenizer.save_pretrained(folder)
        RunDir(run_dir).write_json(
            ALLOCATION_FILE,
            {
                "init_r": ada.init_r,
                "target_r": ada.target_r,
                "init_budget": allocator.init_budget,
                "target_budget": allocator.target_budget,
                "tinit": ada.tinit,
                "tfinal": ada.tfinal,
                "total_steps": t.n_steps,
                "final_ranks": ranks,
                "history": allocator.history,
            },
        )
        say(f"final budget: {sum(ranks.values())} triplets over {len(ranks)} matrices")

    final = t.finish(save, partial(summary, task), report_sections)
    return RunResult(run_dir, scalar_metrics(final), ("accuracy", final["accuracy"]))


def check_options(cfg: RunConfig, n_steps: int) -> None:
    """Refuse options under which AdaLoRA's budget schedule cannot run as the paper's, given the run's steps."""
    ada = cfg.options
    if cfg.train.early_stopping_patience:
        raise UserError("train.early_stopping_patience: AdaLoRA's budget schedule runs to the last step")
    if ada.target_r > ada.init_r:
        raise UserError(f"adalora.target_r ({ada.target_r}) must not exceed adalora.init_r ({ada.init_r})")
    check_schedule(ada.tinit, ada.tfinal, ada.deltaT, n_steps)


def load_trained(run_dir: Path, cfg: RunConfig):
    model, tokenizer = load_classifier(cfg.model.name, saved_labels(run_dir), cfg.train.seed, cfg.model.dropout)
    return load_adalora(model, run_dir / "final"), tokenizer
