"""LoRA fine-tuning of a sequence classifier (Hu et al. 2022).

The loop is full fine-tuning's (`methods/finetune/recipe.py`): LoRA only changes which weights
train (adapters on `target_modules`, plus the fresh classifier head) and what is saved (a
PEFT-format adapter folder in `final/`, loadable with `peft.PeftModel.from_pretrained`).
"""

from __future__ import annotations

from pathlib import Path

from lmforge.adapters.lora import inject_lora, load_adapter, save_adapter
from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.methods.finetune.recipe import fit
from lmforge.models.classifier import load_classifier


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> dict:
    lora = cfg.options

    def adapt(model) -> None:
        names = inject_lora(model, lora.target_modules, lora.r, lora.alpha, lora.dropout, lora.trainable_modules)
        say(f"LoRA r={lora.r} alpha={lora.alpha:g} on {len(names)} layers ({', '.join(lora.target_modules)})")

    def save(model, tokenizer, folder: Path) -> None:
        save_adapter(
            model,
            folder,
            lora.r,
            lora.alpha,
            lora.dropout,
            lora.target_modules,
            lora.trainable_modules,
            base_model=cfg.model.name,
        )
        tokenizer.save_pretrained(folder)

    return fit(cfg, run_dir, resume, adapt, save)


def load_trained(run_dir: Path, cfg: RunConfig, labels: list[str]):
    model, tokenizer = load_classifier(cfg.model.name, labels, cfg.train.seed, cfg.model.dropout)
    return load_adapter(model, run_dir / "final"), tokenizer
