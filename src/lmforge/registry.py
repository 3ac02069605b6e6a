"""The methods lmforge knows: name -> options class, recipe function, loader of a finished run.

An explicit list, kept in sync with `methods/` and the CLI by a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge.methods.adalora import config as adalora_config
from lmforge.methods.finetune import config as finetune_config
from lmforge.methods.lora import config as lora_config


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    paper: str
    options: type
    recipe: str  # "module:function", imported on use so that `lmforge list` stays fast
    loader: str  # (run_dir, cfg, labels) -> (model, tokenizer) of a finished run
    report: str | None = None  # run_dir -> [(title, html)]: the method's own sections of report.html


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
    "adalora": Method(
        "adalora",
        "adaptive rank budget over SVD-form adapters, PEFT AdaLoRA format",
        "Zhang et al. 2023 (AdaLoRA)",
        adalora_config.AdaloraConfig,
        "lmforge.methods.adalora.recipe:run",
        "lmforge.methods.adalora.recipe:load_trained",
        "lmforge.methods.adalora.report:report_sections",
    ),
}


def option_classes() -> dict[str, type]:
    return {name: m.options for name, m in METHODS.items()}


def resolve(dotted: str) -> Callable:
    import importlib

    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def write_run_report(run_dir):
    """report.html of a run, with its method's own sections when the method has any."""
    from pathlib import Path

    import yaml

    from lmforge.core.report import write_report

    try:
        method = METHODS.get((yaml.safe_load(Path(run_dir, "config.yaml").read_text()) or {}).get("method"))
    except (yaml.YAMLError, AttributeError):
        method = None
    sections = resolve(method.report)(run_dir) if method and method.report else None
    return write_report(run_dir, sections)
