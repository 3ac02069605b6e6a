"""Several processes under `accelerate launch`: which process this is, waiting for the others, the settings a
launch must have, and whole weights out of a model whose processes each hold a shard of them.

- Accelerate's `PartialState` is the process group (made once, shared with the Accelerator); the main process
  writes files, the others wait for it (`wait_for_everyone`) before reading them
  (https://huggingface.co/docs/accelerate/basic_tutorials/execution).
- Under FSDP and DeepSpeed ZeRO-3 each process holds a shard of every weight, so saving reads the whole state
  dict, which every process must ask for together: `Accelerator.get_state_dict`
  (https://huggingface.co/docs/accelerate/usage_guides/fsdp, "Saving and loading"), and for the optimizer
  `torch.distributed.checkpoint.state_dict.get_optimizer_state_dict` with `full_state_dict=True`
  (https://pytorch.org/docs/stable/distributed.checkpoint.html). The main process then writes them in the
  format one process writes: the save functions of the recipes run unchanged.
- DeepSpeed (https://www.deepspeed.ai/docs/config-json/) steps its optimizer inside every `backward`, and
  Accelerate fills its `train_micro_batch_size_per_gpu` only from a DataLoader, which lmforge does not prepare.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lmforge.config import TrainConfig
from lmforge.errors import UserError


def process_state():
    """Accelerate's PartialState: this process's index, the number of processes, the process group.

    A launch that started several processes (WORLD_SIZE > 1) in which Accelerate sees one (no GPU, and no
    ACCELERATE_USE_CPU) is refused: each process would run alone and write the same run folder."""
    from accelerate import PartialState
    from accelerate.utils.environment import parse_flag_from_env

    # As the Accelerator makes it (AcceleratorState): ACCELERATE_USE_CPU makes a group of CPU processes
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = os.environ.get("WORLD_SIZE", "1")
    if launched.isdigit() and int(launched) > 1 and state.num_processes == 1:
        raise UserError(
            f"WORLD_SIZE={launched} but Accelerate sees one process (no GPU found): each process would train "
            "alone and write the same run folder; on a CPU machine set ACCELERATE_USE_CPU=true"
        )
    return state


def is_main_process() -> bool:
    return process_state().is_main_process


def wait_for_everyone() -> None:
    """Wait until every process gets here (nothing with one process)."""
    process_state().wait_for_everyone()


def launched_with_deepspeed() -> bool:
    """`accelerate launch` with a DeepSpeed config (it sets ACCELERATE_USE_DEEPSPEED for each process)."""
    from accelerate.utils.environment import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")


def check_deepspeed_launch(train: TrainConfig) -> None:
    """Before the Accelerator is made: DeepSpeed steps its optimizer inside every `backward` (Accelerate's
    DeepSpeedEngineWrapper), so the loop's micro-batches would each be a step."""
    if launched_with_deepspeed() and train.grad_accum > 1:
        raise UserError(
            f"train.grad_accum={train.grad_accum}: under DeepSpeed every micro-batch would be an optimizer step; "
            "set train.grad_accum=1 (and a larger train.batch_size)"
        )


def fill_deepspeed_config(plugin, batch_size: int, num_processes: int) -> None:
    """Complete the DeepSpeed config Accelerate will hand to DeepSpeed (`plugin.deepspeed_config`, the dict the
    plugin reads back): `train_micro_batch_size_per_gpu` from train.batch_size (the global micro-batch, of
    which each process takes every N-th example) where the file leaves it "auto" or unset, and one optimizer
    step per `backward` (gradient_accumulation_steps 1 or "auto", which Accelerate fills with 1); under ZeRO-3,
    the weights gathered for saving (stage3_gather_16bit_weights_on_model_save)."""
    config = plugin.deepspeed_config
    accumulation = config.get("gradient_accumulation_steps", "auto")
    if accumulation not in ("auto", 1):
        raise UserError(
            f"DeepSpeed config: gradient_accumulation_steps={accumulation}; lmforge steps once per train.batch_size, "
            "so set it to 1 or auto"
        )
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = math.ceil(batch_size / num_processes)
    if plugin.zero_stage == 3:  # final/ and checkpoints hold whole tensors: Accelerate's get_state_dict needs it
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True


def shards_weights(accelerator) -> bool:
    """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def check_sharding(accelerator, train: TrainConfig, resume: bool) -> None:
    """What a sharded run cannot do yet, refused before the run folder is written."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise UserError("FSDP: lmforge runs FSDP2; set fsdp_version: 2 in the Accelerate config (--fsdp_version 2)")
    if resume and kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise UserError(
            f"--resume under {kind.value}: a checkpoint's optimizer state is not restored into the sharded "
            "optimizer yet; resume with DDP or one process"
        )
    if kind == DistributedType.DEEPSPEED and shards_weights(accelerator) and train.early_stopping_patience:
        raise UserError(
            "train.early_stopping_patience under DeepSpeed ZeRO-3: restoring the best weights into the "
            "partitioned model is not supported; set it to 0 or use ZeRO-2"
        )


@contextmanager
def whole_weights(accelerator, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The plain module (`accelerator.unwrap_model(model)`), whose parameters hold the whole weights on the main
    process while the block runs, for saving. Every process must enter it: gathering the shards is collective.

    Unsharded (one process, DDP, ZeRO-2) the module is yielded as it is. Sharded, the main process gets each
    parameter replaced by a plain one holding the gathered tensor (same `requires_grad`, tied weights stay
    tied), put back afterwards; the other processes get the module with their shards, not to be saved."""
    unwrapped = accelerator.unwrap_model(model)
    if not shards_weights(accelerator):
        yield unwrapped
        return
    gathered = accelerator.get_state_dict(model)  # collective; the tensors land on the main process only
    if not accelerator.is_main_process:
        yield unwrapped
        return
    names: dict[int, list[str]] = {}  # a parameter -> every name it has (tied weights have several)
    places = []  # (module, attribute, the parameter there)
    for prefix, module in unwrapped.named_modules(remove_duplicate=False):
        for attribute, param in module._parameters.items():
            if param is not None:
                names.setdefault(id(param), []).append(f"{prefix}.{attribute}" if prefix else attribute)
                places.append((module, attribute, param))
    whole = {}
    for module, attribute, param in places:
        if id(param) not in whole:
            key = next((n for n in names[id(param)] if n in gathered), None)
            if key is None:
                raise RuntimeError(f"the gathered state dict has no {names[id(param)][0]}")
            whole[id(param)] = torch.nn.Parameter(gathered[key], requires_grad=param.requires_grad)
        module._parameters[attribute] = whole[id(param)]
    try:
        yield unwrapped
    finally:
        for module, attribute, param in places:
            module._parameters[attribute] = param


def whole_optimizer_state(accelerator, model: torch.nn.Module, optimizer) -> dict | None:
    """`optimizer.state_dict()` as one process has it (state by parameter index, whole tensors): under FSDP the
    shards gathered onto the main process (None on the others), every process calling it together."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    unwrapped, inner = accelerator.unwrap_model(model), optimizer.optimizer  # AcceleratedOptimizer's own
    reshard(unwrapped)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # tensors on the main process only
    by_name = get_optimizer_state_dict(unwrapped, inner, options=options)  # {"state": {name: ...}, "param_groups"}
    if not accelerator.is_main_process:
        return None
    name_of = {id(p): n for n, p in unwrapped.named_parameters()}
    index = {name_of[id(p)]: i for i, p in enumerate(p for group in inner.param_groups for p in group["params"])}
    ordered = sorted(by_name["state"].items(), key=lambda item: index[item[0]])  # as one process orders it
    return {
        "state": {index[name]: state for name, state in ordered},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in by_name["param_groups"]],
    }


def load_whole_weights(accelerator, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load whole tensors (a subset of the weights, by name) into the model on every process: into each
    process's shards under FSDP (every process read `tensors`), as they are otherwise."""
    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type != DistributedType.FSDP:
        unwrapped.load_state_dict(tensors, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    reshard(unwrapped)
    set_model_state_dict(unwrapped, tensors, options=StateDictOptions(full_state_dict=True, strict=False))


def reshard(model: torch.nn.Module) -> None:
    """Put FSDP2's sharded parameters back in the modules. The root module keeps its weights gathered after a
    forward pass (FSDP2 reshards the root after backward only), so after an evaluation its parameters are not
    the sharded ones the optimizer holds."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
