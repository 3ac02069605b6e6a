"""Fine-tune a sequence classifier: setup -> train -> evaluate -> save.

`fit` is the loop, written out on the shared parts of `core/classifier_run.py`; full fine-tuning
calls it as is, and LoRA calls it with a function that adapts the model before training and one
that saves the adapter.
"""

from __future__ import annotations

import time
from pathlib import Path

from lmforge.config import RunConfig
from lmforge.core.classifier_run import Adapt, SaveFinal, start_classifier_run
from lmforge.core.loop import StopSignal
from lmforge.models.classifier import load_saved_classifier


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> dict:
    freeze = cfg.options.freeze_embeddings

    def adapt(model) -> None:
        if freeze:
            model.get_input_embeddings().weight.requires_grad_(False)

    return fit(cfg, run_dir, resume, adapt, save_pretrained)


def fit(cfg: RunConfig, run_dir: Path, resume: bool, adapt: Adapt, save_final: SaveFinal) -> dict:
    t = start_classifier_run(cfg, run_dir, resume, adapt)
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate_gradients(batch)
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)
    return t.finish(save_final)


def save_pretrained(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_trained(run_dir: Path, cfg: RunConfig, labels: list[str]):
    return load_saved_classifier(run_dir / "final")
