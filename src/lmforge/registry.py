"""The methods lmforge knows: name -> options class, recipe function, loader of a finished run.

An explicit list, kept in sync with `methods/` and the CLI by a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge.methods.finetune import config as finetune_config
from lmforge.methods.lora import config as lora_config


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    paper: str
    options: type
    recipe: str  # "module:function", imported on use so that `lmforge list` stays fast
    loader: str


METHODS = {
    "finetune": Method(
        "finetune",
        "full fine-tuning of every weight",
        "Devlin et al. 2019 (BERT)",
        finetune_config.FinetuneConfig,
        "lmforge.methods.finetune.recipe:run",
        "lmforge.methods.finetune.recipe:load_trained",
    ),
    "lora": Method(
        "lora",
        "low-rank adapters on frozen weights, PEFT format",
        "Hu et al. 2022 (LoRA)",
        lora_config.LoraConfig,
        "lmforge.methods.lora.recipe:run",
        "lmforge.methods.lora.recipe:load_trained",
    ),
}


def option_classes() -> dict[str, type]:
    return {name: m.options for name, m in METHODS.items()}


def resolve(dotted: str) -> Callable:
    import importlib

    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)
