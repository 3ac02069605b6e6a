"""LoRA: low-rank adapters on frozen linear layers (Hu et al. 2022, "LoRA: Low-Rank Adaptation of
Large Language Models", equation 3: h = W0 x + (alpha / r) * B A x, with B = 0 so training starts
from the pretrained function). The paper draws A from a Gaussian (section 4.1); A here is
Kaiming-uniform, as nn.Linear's default, which is what the authors' own code (loralib's
`reset_parameters`) and peft (`init_lora_weights=True`) do, so our adapters match peft's at init.

Adapters are injected by module-name pattern, merged into / removed from the base weights, and
saved in PEFT's adapter format (`adapter_config.json` + `adapter_model.safetensors`) so that
`peft.PeftModel.from_pretrained` loads them unchanged. LoRA also adapts GPT-2's `Conv1D` layers
(`c_attn`, `c_proj`, `c_fc`: a linear layer whose weight is stored (in, out), PEFT's
`fan_in_fan_out`); A and B keep the same shapes, only merging transposes the update.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.errors import UserError

PEFT_PREFIX = "base_model.model."


def conv1d_class() -> type[nn.Module]:
    """GPT-2's Conv1D (transformers): a linear layer with its weight stored (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(in, out) features of an nn.Linear or a Conv1D."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.weight.shape[0], layer.weight.shape[1]  # Conv1D: (in, out)


class AdapterLinear(nn.Module):
    """A frozen `base` linear plus a low-rank update `delta_weight()` (out, in) that can be merged
    into the base weight and taken out again. LoRA and AdaLoRA's SVD form are both of this kind."""

    base: nn.Linear
    merged: bool
    fan_in_fan_out: bool = False  # the base stores its weight (in, out): GPT-2's Conv1D

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _delta_for_base(self) -> torch.Tensor:
        delta = self.delta_weight()  # (out, in)
        return (delta.T if self.fan_in_fan_out else delta).to(self.base.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self._delta_for_base()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self._delta_for_base()
            self.merged = False


class LoraLinear(AdapterLinear):
    """y = base(x) + scaling * B(A(dropout(x))); A: (r, in), B: (out, r). `base` is an nn.Linear or
    a Conv1D."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.fan_in_fan_out = not isinstance(base, nn.Linear)
        in_features, out_features = linear_shape(base)
        self.r = r
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # loralib's and peft's choice; the paper: Gaussian
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling


def matches(module_name: str, targets: list[str]) -> bool:
    """PEFT's rule for a list of targets: the full name equals a target or ends with `.target`."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def inject_lora(
    model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float, trainable_modules: list[str]
) -> list[str]:
    """Replace matching nn.Linear (and GPT-2 Conv1D) layers by LoraLinear; freeze all but LoRA and
    `trainable_modules`.

    Returns the names of the adapted layers. `trainable_modules` (e.g. ["classifier"]) are trained
    in full and saved with the adapter, as PEFT's `modules_to_save`.
    """
    return inject_adapters(
        model,
        targets,
        lambda name, base: LoraLinear(base, r, alpha, dropout),
        trainable_modules,
        (nn.Linear, conv1d_class()),
    )


def inject_adapters(
    model: nn.Module,
    targets: list[str],
    make_layer: Callable[[str, nn.Linear], nn.Module],
    trainable_modules: list[str],
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> list[str]:
    """Wrap each layer of `layer_types` whose name matches `targets` with `make_layer(name, layer)`;
    freeze everything else except the adapter's own parameters and `trainable_modules`. Returns the
    adapted names."""
    names = [n for n, m in model.named_modules() if isinstance(m, layer_types) and matches(n, targets)]
    if not names:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, layer_types)})
        raise UserError(f"target_modules {targets} match no linear layer (layer names: {', '.join(linear)})")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, make_layer(name, getattr(parent, child)))  # new adapter parameters train
    for target in trainable_modules:
        found = [m for n, m in model.named_modules() if matches(n, [target])]
        if not found:
            raise UserError(f"trainable_modules: no module named {target!r} in the model")
        for module in found:
            for p in module.parameters():
                p.requires_grad_(True)
    return names


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def remove_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter and put the plain nn.Linear back: a standard transformers model.

    Every AdapterLinear qualifies: LoRA and AdaLoRA's SVD form.
    """
    adapters = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}
    for name, layer in adapters.items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)
    return model


def adapter_state_dict(model: nn.Module, trainable_modules: list[str]) -> dict[str, torch.Tensor]:
    """Tensors in PEFT's key layout: `base_model.model.<layer>.lora_A.weight`, and full modules to save."""
    state = modules_to_save_state(model, trainable_modules)
    for name, layer in lora_layers(model).items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    return state


def modules_to_save_state(model: nn.Module, trainable_modules: list[str]) -> dict[str, torch.Tensor]:
    """PEFT's `modules_to_save` tensors: every parameter of the fully trained modules (the head)."""
    state = {}
    for name, module in model.named_modules():
        if matches(name, trainable_modules) and not isinstance(module, AdapterLinear):
            for pname, p in module.named_parameters():
                state[f"{PEFT_PREFIX}{name}.{pname}"] = p.detach().contiguous()
    return state


def save_adapter(
    model: nn.Module,
    folder: Path,
    r: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    trainable_modules: list[str],
    base_model: str,
    task_type: str = "SEQ_CLS",
) -> None:
    """Write a PEFT-format LoRA adapter folder; `task_type` is PEFT's (SEQ_CLS, CAUSAL_LM)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model, trainable_modules), str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": list(targets),
        "modules_to_save": list(trainable_modules),
        "bias": "none",
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in lora_layers(model).values()),
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """Inject LoRA as described by a PEFT adapter folder and load its weights into `model`."""
    config = read_adapter_config(folder, "LORA")
    modules_to_save = config.get("modules_to_save") or []
    inject_lora(model, config["target_modules"], config["r"], config["lora_alpha"], 0.0, modules_to_save)
    # PEFT names LoRA's matrices `lora_A.weight` (they are nn.Linear there); ours are bare parameters
    return load_peft_tensors(
        model, folder, lambda key: key.replace(".lora_A.weight", ".lora_A").replace(".lora_B.weight", ".lora_B")
    )


def read_adapter_config(folder: Path, peft_type: str) -> dict:
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type") != peft_type:
        raise UserError(f"{folder}: adapter type {config.get('peft_type')!r} is not {peft_type}")
    return config


def load_peft_tensors(model: nn.Module, folder: Path, rename: Callable[[str], str] = lambda key: key) -> nn.Module:
    """Load `adapter_model.safetensors` into an already adapted `model`; every tensor must fit."""
    from lmforge.core.checkpoint import read_weights

    state = read_weights(folder / "adapter_model.safetensors")
    own = {rename(key.removeprefix(PEFT_PREFIX)): tensor for key, tensor in state.items()}
    unknown = set(own) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise UserError(f"{folder}: adapter tensors do not fit the model: {sorted(unknown)[:3]}")
    with torch.no_grad():
        model.load_state_dict(own, strict=False)
    return model
