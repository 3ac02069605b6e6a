"""One run of the AdaLoRA comparison, in its own process (`bench.py --job SPEC`), so that peak memory is
per run: an lmforge recipe (LoRA, AdaLoRA, full fine-tuning), or peft's AdaLoRA in lmforge's loop; the
result (accuracy, steps, step time, adapter size, memory, commit, date) goes to the spec's output file.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def final_adapter_parameters(final: Path) -> int | None:
    """Adapter parameters as saved after training (LoRA: r(in + out) per matrix; AdaLoRA, trimmed to the
    kept triplets: r_k(in + out + 1)); the classifier head, trained by every arm, is not counted."""
    path = final / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if "lora_" in k)


def run_peft_adalora(cfg, run_dir: Path) -> dict:
    """peft's AdaLoRA in lmforge's loop (the steps of methods/adalora/recipe.py, peft's adapter in place of
    lmforge's): `get_peft_model` adapts the model in place, and the loop calls `update_and_allocate` after
    `optimizer.step()`, before `zero_grad`, as peft's docs ask."""
    from functools import partial

    import torch
    from peft import AdaLoraConfig, get_peft_model

    from lmforge.core.console import say
    from lmforge.core.loop import StopSignal, describe_parameters, seed_everything, total_steps
    from lmforge.core.training_run import start_training
    from lmforge.data.classify import classification_loss, encode_task, evaluate, load_classification, summary
    from lmforge.data.files import task_manifest
    from lmforge.models.classifier import load_classifier

    ada, train = cfg.options, cfg.train
    task = load_classification(cfg.data)
    n_steps = total_steps(len(task.train), train)  # peft needs the total step count when the adapter is built

    seed_everything(train.seed)
    model, tokenizer = load_classifier(cfg.model.name, task.labels, train.seed, cfg.model.dropout)
    peft_config = AdaLoraConfig(
        task_type="SEQ_CLS",
        init_r=ada.init_r,
        target_r=ada.target_r,
        tinit=ada.tinit,
        tfinal=ada.tfinal,
        deltaT=ada.deltaT,
        beta1=ada.beta1,
        beta2=ada.beta2,
        orth_reg_weight=ada.orth_reg_weight,
        total_step=n_steps,
        lora_alpha=ada.lora_alpha,
        lora_dropout=ada.lora_dropout,
        target_modules=list(ada.target_modules),
    )
    peft_model = get_peft_model(model, peft_config)  # replaces layers of `model` in place
    say(describe_parameters(cfg.model.name, model))
    data = encode_task(tokenizer, task, cfg.model.max_length)

    t = start_training(
        cfg, run_dir, False, model, tokenizer, data.lengths, task_manifest(task), select_metric=train.metric
    )
    pad_id, device = tokenizer.pad_token_id, t.accelerator.device
    t.evaluator = partial(
        evaluate, t.model, data.eval_ids, data.eval_labels, data.n_labels, pad_id, train.eval_batch_size, device
    )
    tuner = peft_model.base_model
    weight = ada.orth_reg_weight

    def regularizer():  # peft's AdaLoraModel.forward adds this when the model computes its own loss
        terms = []
        for name, p in t.unwrapped.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                cov = p @ p.T if "lora_A" in name else p.T @ p
                terms.append(torch.norm(cov - torch.eye(cov.shape[0], device=cov.device), p="fro"))
        return weight * torch.stack(terms).mean()

    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            micro_loss = partial(classification_loss, t.model, data, step_size=batch.size, pad_id=pad_id, device=device)
            loss = t.accumulate(batch, micro_loss, regularizer)
            t.optimizer_step(batch)
            tuner.update_and_allocate(t.state.step)
            t.optimizer.zero_grad(set_to_none=True)
            t.end_step(loss, started, stop)
    return t.finish(lambda model, tokenizer, folder: peft_model.save_pretrained(folder), partial(summary, task))


def job(spec: dict, method: str) -> None:
    """One run of the comparison (`spec`: its row, data, seed, overrides and output file) in this process;
    `method` is the row's recipe method, or "peft" for peft's AdaLoRA."""
    import torch

    from lmforge.cli.main import find_recipe, load_run_config
    from lmforge.registry import METHODS, resolve

    recipe_method = "adalora" if method == "peft" else method
    # schedule overrides (adalora.*) apply to the AdaLoRA arms only
    overrides = [o for o in spec["overrides"] if o.split(".")[0] in ("model", "data", "train", recipe_method)]
    cfg = load_run_config(find_recipe(f"{recipe_method}/minilm_{spec['dataset']}"), overrides)
    run_dir = Path(spec["run_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)
    version = None
    if method == "peft":
        import peft

        run_peft_adalora(cfg, run_dir)
        version = peft.__version__
    else:
        resolve(METHODS[method].recipe)(cfg, run_dir, False)
    final = json.loads((run_dir / "final.json").read_text())
    result = {
        **spec,
        "lr": cfg.train.lr,
        "accuracy": final["metrics"]["accuracy"],
        "macro_f1": final["metrics"]["macro_f1"],
        "steps": final["steps"],
        "s_per_step": final["train_seconds"] / final["steps"],
        "trainable_parameters": final["trainable_parameters"],
        "final_adapter_parameters": final_adapter_parameters(run_dir / "final"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "peft": version,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    allocation = run_dir / "adalora.json"
    if allocation.is_file():
        result["final_ranks"] = json.loads(allocation.read_text())["final_ranks"]
    Path(spec["out"]).write_text(json.dumps(result, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
