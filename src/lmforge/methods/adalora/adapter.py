"""Save and load AdaLoRA adapters in PEFT's format (`peft_type: ADALORA`).

Each matrix is trimmed to the triplets it kept (possibly none): tensors `lora_A` (r_k, in),
`lora_E` (r_k, 1) and `lora_B` (out, r_k) under `base_model.model.<module>.`, and
`adapter_config.json` carries `rank_pattern` (module.lora_E -> which of the init_r triplets were
kept), as `peft.PeftModel.from_pretrained` expects.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from lmforge.adapters.lora import (
    PEFT_PREFIX,
    inject_adapters,
    load_peft_tensors,
    modules_to_save_state,
    read_adapter_config,
)
from lmforge.methods.adalora.layers import SVDLinear, svd_layers


def save_adalora(model: nn.Module, folder: Path, options, total_steps: int, base_model: str) -> dict[str, int]:
    """Write the trimmed adapter; returns the final rank of every adapted matrix."""
    folder.mkdir(parents=True, exist_ok=True)
    state, rank_pattern, ranks = {}, {}, {}
    for name, layer in svd_layers(model).items():
        keep = layer.lora_E.detach().view(-1) != 0  # (init_r,) the triplets the allocator kept
        rank_pattern[f"{name}.lora_E"] = keep.tolist()
        ranks[name] = int(keep.sum())
        state[f"{PEFT_PREFIX}{name}.lora_A"] = layer.lora_A.detach()[keep].contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_E"] = layer.lora_E.detach()[keep].contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B"] = layer.lora_B.detach()[:, keep].contiguous()
    state.update(modules_to_save_state(model, options.trainable_modules))
    save_file(state, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "ADALORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "init_r": options.init_r,
        "target_r": options.target_r,
        "tinit": options.tinit,
        "tfinal": options.tfinal,
        "deltaT": options.deltaT,
        "beta1": options.beta1,
        "beta2": options.beta2,
        "orth_reg_weight": options.orth_reg_weight,
        "total_step": total_steps,
        "rank_pattern": rank_pattern,
        "lora_alpha": options.lora_alpha,
        "lora_dropout": options.lora_dropout,
        "target_modules": list(options.target_modules),
        "modules_to_save": list(options.trainable_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ranks


def load_adalora(model: nn.Module, folder: Path) -> nn.Module:
    """Inject SVD adapters at the saved ranks (rank-0 modules included) and load the tensors."""
    config = read_adapter_config(folder, "ADALORA")
    pattern = {key.removesuffix(".lora_E"): sum(kept) for key, kept in config["rank_pattern"].items()}

    def make_layer(name: str, base: nn.Linear) -> SVDLinear:
        return SVDLinear(base, pattern[name], config["lora_alpha"], 0.0, init_r=config["init_r"])

    inject_adapters(model, config["target_modules"], make_layer, config.get("modules_to_save") or [])
    return load_peft_tensors(model, folder)
