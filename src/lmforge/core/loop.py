"""The training loop's shared mechanics; each recipe writes its own loop out of these.

- Devices, mixed precision and distribution come from Accelerate.
- Data order is a function of (seed, epoch) only, so a resumed run replays exactly the batches an
  uninterrupted one would see: `optimizer_batches` restarts at (epoch, batch) from `TrainState`.
- One optimizer step covers `batch_size * grad_accum` examples split into micro-batches; each
  micro-batch's summed loss is divided by the step's example count (`loss_scale`), so batch 8 x
  accumulation 1 and batch 1 x accumulation 8 give the same gradient, partial last batch included.
- SIGINT / SIGTERM set a flag (`StopSignal`); the recipe checkpoints at the next step and exits.
"""

from __future__ import annotations

import math
import random
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.core.processes import check_deepspeed_launch, fill_deepspeed_config, process_state
from lmforge.errors import UserError


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs; saved in each checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    running_loss: float = 0.0  # training loss summed since the last metrics line
    running_steps: int = 0
    train_seconds: float = 0.0  # wall time in forward / backward / optimizer steps, evaluation excluded

    def to_dict(self) -> dict:
        return asdict(self)


def make_accelerator(train: TrainConfig, trackers: list | None = None):
    """Accelerate's Accelerator for `train.mixed_precision`, logging to `trackers` (Accelerate's tracker objects
    for `train.report_to`, made by core/trackers.py). A loop that sends its metrics to no tracker passes none,
    and `train.report_to` is then refused rather than silently ignored.

    Refused: fp16 on a CPU (Accelerate would train in float32 without saying so), a launch of several processes
    in which Accelerate sees one (each would run alone), and
    `train.grad_accum` > 1 under DeepSpeed (it steps after every backward pass). Under DeepSpeed the config's
    `train_micro_batch_size_per_gpu` comes from `train.batch_size` where the file leaves it "auto"."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    if train.report_to and trackers is None:
        raise UserError("train.report_to: not available here (this loop writes metrics.jsonl only); remove it")
    state = process_state()
    if train.mixed_precision == "fp16" and state.device.type == "cpu":
        # Accelerate turns fp16 autocast off on a CPU without a word: the run would be float32 under an fp16 label
        raise UserError("train.mixed_precision: fp16 does not run on a CPU (it would train in float32); use bf16 or no")
    check_deepspeed_launch(train)
    accelerator = Accelerator(mixed_precision=train.mixed_precision, log_with=trackers or None)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin, train.batch_size, accelerator.num_processes)
    return accelerator


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("linear", "cosine", "constant")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, name: str = "adamw") -> torch.optim.Optimizer:
    """The optimizer over trainable parameters; biases and normalisation weights (1-D tensors) get no decay.

    adamw: torch's AdamW (Loshchilov and Hutter 2019). adafactor: transformers' Adafactor (Shazeer and Stern
    2018) at the given learning rate (relative_step and scale_parameter off: the schedule stays ours), for
    its factored second moments (less optimizer memory). sgd: SGD with momentum 0.9."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer {name!r}: one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_ratio: float,
    phases: list[int] | None = None,
    shape: str = "linear",
):
    """Linear warmup over `warmup_ratio` of the steps, then `shape`: linear decay to zero, cosine (half a
    cosine down to zero, as transformers' get_cosine_schedule_with_warmup) or constant. The warmup starts
    at 1 / (warmup + 1) of the peak rather than 0, so that no step is wasted at learning rate 0.

    `phases` (step counts summing to `total_steps`) restarts the schedule at each phase boundary:
    a recipe with stages trained one after the other (TinyBERT's intermediate layers, then its
    prediction layer) gives each its own warmup and decay, as separate runs would."""
    phases = [p for p in (phases or [total_steps]) if p > 0]
    starts = [sum(phases[:i]) for i in range(len(phases))]

    def factor(step: int) -> float:
        i = max(j for j, start in enumerate(starts) if step >= start) if step >= 0 else 0
        length, local = phases[i], step - starts[i]
        warmup = int(round(warmup_ratio * length))
        if local < warmup:
            return (local + 1) / (warmup + 1)
        if shape == "constant":
            return 1.0
        remaining = max(0.0, (length - local) / max(1, length - warmup))  # 1 -> 0 after the warmup
        if shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (1.0 - remaining)))
        return remaining

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Keep only each layer's input in the forward pass and recompute the rest in the backward (Chen et al.
    2016, "Training Deep Nets with Sublinear Memory Cost"), through transformers' own switch; non-reentrant,
    so it works with frozen embeddings (LoRA) as well."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"model.gradient_checkpointing: {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def cast_weights(model: nn.Module, dtype: str, mixed_precision: str) -> None:
    """`model.dtype`: with bfloat16, every weight (trainable and frozen) and floating buffer is cast to bfloat16 for
    the whole run: half the memory of the weights, their gradients and the optimizer's state, with no float32
    copy ("pure" bfloat16, unlike mixed precision; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning
    Training", keep a float32 master copy instead). An update smaller than about 2^-8 of a weight is then rounded
    away, so a learning rate that suits float32 may move some weights less. float32 leaves the model as loaded."""
    if dtype == "float32":
        return
    if mixed_precision == "fp16":
        raise UserError(
            "model.dtype=bfloat16 with train.mixed_precision=fp16: fp16 mixed precision keeps float32 weights and "
            "scales the loss for float16 gradients, but these weights are bfloat16; use train.mixed_precision=bf16 "
            "or no"
        )
    model.to(torch.bfloat16)


def steps_per_epoch(n_examples: int, train: TrainConfig) -> int:
    return math.ceil(n_examples / (train.batch_size * train.grad_accum))


def total_steps(n_examples: int, train: TrainConfig) -> int:
    if train.max_steps > 0:
        return train.max_steps
    return max(1, math.ceil(train.epochs * steps_per_epoch(n_examples, train)))


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


@dataclass
class OptimizerBatch:
    epoch: int
    index: int  # position of this batch within its epoch
    micro_batches: list[list[int]]  # example indices, this process's share
    size: int  # examples in the whole step, over all processes: the loss is divided by it
    examples: list[int]  # the whole step's example indices, over all processes (a loss per token counts them)
    stand_ins: list[bool] = field(default_factory=list)  # per micro-batch: this process has none of its examples


GROUP_SPAN = 50  # optimizer batches whose examples are sorted by length together


def epoch_batches(lengths: list[int], train: TrainConfig, epoch: int) -> list[list[int]]:
    """The optimizer batches (example indices) of one epoch, a function of (seed, epoch) only.

    With `group_by_length`, examples are sorted by length within spans of GROUP_SPAN batches and
    the batches then shuffled: similar lengths share a batch, so little compute goes to padding,
    while the order stays random at the scale of an epoch.
    """
    per_step = train.batch_size * train.grad_accum
    order = epoch_order(len(lengths), train.seed, epoch)
    if train.group_by_length:
        span = per_step * GROUP_SPAN
        order = [i for s in range(0, len(order), span) for i in sorted(order[s : s + span], key=lambda i: -lengths[i])]
    batches = [order[s : s + per_step] for s in range(0, len(order), per_step)]
    if train.group_by_length:
        generator = torch.Generator().manual_seed(seed_for_batches(train.seed, epoch))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def seed_for_batches(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch + 7_919


def optimizer_batches(
    lengths: list[int], train: TrainConfig, state: TrainState, rank: int = 0, world: int = 1
) -> Iterator[OptimizerBatch]:
    """Endless stream of optimizer batches, resuming at (state.epoch, state.batch_in_epoch).

    `lengths` are the examples' token counts. With several processes each takes every
    `world`-th example of each micro-batch. A process left with none (a micro-batch of fewer examples than
    processes: the last of an epoch) gets the micro-batch's first example as a stand-in, which
    `TrainingRun.accumulate` weighs 0: every process then runs as many forward and backward passes, which DDP
    (buffers synced in each forward) and FSDP (weights gathered in each) need.
    """
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        batches = epoch_batches(lengths, train, epoch)
        for b in range(start, len(batches)):
            chunk = batches[b]
            whole = [chunk[i : i + train.batch_size] for i in range(0, len(chunk), train.batch_size)]
            mine = [micro[rank::world] for micro in whole]
            stand_ins = [not m for m in mine]
            yield OptimizerBatch(epoch, b, [m or w[:1] for m, w in zip(mine, whole)], len(chunk), chunk, stand_ins)
        epoch, start = epoch + 1, 0


def advance(state: TrainState, batch: OptimizerBatch, batches_per_epoch: int) -> None:
    """Record that `batch` was consumed by one optimizer step."""
    state.step += 1
    state.epoch, state.batch_in_epoch = batch.epoch, batch.index + 1
    if state.batch_in_epoch >= batches_per_epoch:
        state.epoch, state.batch_in_epoch = batch.epoch + 1, 0


def is_due(step: int, every: int, batches_per_epoch: int) -> bool:
    """Eval / save schedule: every `every` steps, or at each epoch end when `every` is 0."""
    return step % (every or batches_per_epoch) == 0


def update_early_stopping(state: TrainState, value: float, patience: int) -> bool:
    """Track the best metric (higher is better); returns True when `value` is a new best."""
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        return True
    state.evals_without_improvement += 1
    if patience and state.evals_without_improvement >= patience:
        state.stopped_early = True
    return False


class StopSignal:
    """Context manager: SIGINT / SIGTERM set `.requested` instead of killing the process mid-step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: give up immediately
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def describe_parameters(name: str, model: nn.Module) -> str:
    """'tiny-bert: 1,234 of 98,765 parameters trainable (1.25%)'."""
    trainable, total = count_parameters(model)
    return f"{name}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)"
