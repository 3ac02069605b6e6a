"""The methods lmforge knows: name -> kind, options class, recipe function, loader of a finished run.

An explicit list, kept in sync with `methods/` and the CLI by a test. A method's `kind` says what a
finished run's final/ holds, and so which commands take it:

- classifier       a sequence classifier on plain token ids: eval, predict, export, explain, probe
- tree_classifier  a classifier on its method's own inputs (K-BERT's sentence trees): its evaluation is
                   in final.json; eval / predict / explain, which feed plain token ids, refuse it
- causal_lm        a causal LM: eval-gen, serve, explain with prompts
- seq2seq          an encoder-decoder (AST-T5)
- encoder          an encoder without a task head (PMLM)
- agent            no trained weights (Introspective Tips)

A recipe is `run(cfg, run_dir, resume) -> RunResult`; a loader `load_trained(run_dir, cfg) -> (model,
tokenizer)` reads what it needs (a classifier's labels) from the run folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from lmforge.config import RunConfig, apply_overrides, build_config, read_yaml
from lmforge.errors import UserError
from lmforge.methods.adalora import config as adalora_config
from lmforge.methods.continual import config as continual_config
from lmforge.methods.continual_lm import config as continual_lm_config
from lmforge.methods.crest import config as crest_config
from lmforge.methods.finetune import config as finetune_config
from lmforge.methods.kbert import config as kbert_config
from lmforge.methods.lora import config as lora_config
from lmforge.methods.sft import config as sft_config
from lmforge.methods.tinybert import config as tinybert_config
from lmforge.methods.vstar import config as vstar_config

Kind = Literal["classifier", "tree_classifier", "causal_lm", "seq2seq", "encoder", "agent"]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind  # what a finished run's final/ holds (module docstring)
    summary: str
    paper: str
    options: type
    recipe: str  # "module:function", imported on use so that `lmforge list` stays fast
    loader: str  # (run_dir, cfg) -> (model, tokenizer) of a finished run
    report: str | None = None  # run_dir -> [(title, html)]: the method's own sections of report.html

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


METHODS = {
    "finetune": Method(
        "finetune",
        "classifier",
        "full fine-tuning of every weight",
        "Devlin et al. 2019 (BERT)",
        finetune_config.FinetuneConfig,
        "lmforge.methods.finetune.recipe:run",
        "lmforge.methods.finetune.recipe:load_trained",
    ),
    "lora": Method(
        "lora",
        "classifier",
        "low-rank adapters on frozen weights, PEFT format",
        "Hu et al. 2022 (LoRA)",
        lora_config.LoraConfig,
        "lmforge.methods.lora.recipe:run",
        "lmforge.methods.lora.recipe:load_trained",
    ),
    "adalora": Method(
        "adalora",
        "classifier",
        "adaptive rank budget over SVD-form adapters, PEFT AdaLoRA format",
        "Zhang et al. 2023 (AdaLoRA)",
        adalora_config.AdaloraConfig,
        "lmforge.methods.adalora.recipe:run",
        "lmforge.methods.adalora.recipe:load_trained",
        "lmforge.methods.adalora.report:report_sections",
    ),
    "tinybert": Method(
        "tinybert",
        "classifier",
        "transformer distillation into a small student: general, then task-specific with augmentation",
        "Jiao et al. 2020 (TinyBERT)",
        tinybert_config.TinybertConfig,
        "lmforge.methods.tinybert.recipe:run",
        "lmforge.methods.tinybert.recipe:load_trained",
        "lmforge.methods.tinybert.report:report_sections",
    ),
    "kbert": Method(
        "kbert",
        "tree_classifier",
        "full fine-tuning on sentence trees: knowledge-graph triples, soft positions, visible matrix",
        "Liu et al. 2020 (K-BERT)",
        kbert_config.KbertConfig,
        "lmforge.methods.kbert.recipe:run",
        "lmforge.methods.kbert.recipe:load_trained",
    ),
    "sft": Method(
        "sft",
        "causal_lm",
        "supervised fine-tuning of a causal LM on (prompt, completion) pairs, full or LoRA",
        "Ouyang et al. 2022 (SFT stage); Hu et al. 2022 (LoRA)",
        sft_config.SftConfig,
        "lmforge.methods.sft.recipe:run",
        "lmforge.methods.sft.recipe:load_trained",
        "lmforge.methods.sft.report:report_sections",
    ),
    "vstar": Method(
        "vstar",
        "causal_lm",
        "self-improvement: generators on their own correct solutions, a DPO verifier on correct vs incorrect",
        "Hosseini et al. 2024 (V-STaR)",
        vstar_config.VstarConfig,
        "lmforge.methods.vstar.recipe:run",
        "lmforge.methods.vstar.recipe:load_trained",
    ),
    "crest": Method(
        "crest",
        "classifier",
        "class-rebalancing self-training on FixMatch for long-tailed labels; CReST+ aligns pseudo-labels",
        "Wei et al. 2021 (CReST)",
        crest_config.CrestConfig,
        "lmforge.methods.crest.recipe:run",
        "lmforge.methods.crest.recipe:load_trained",
    ),
    "continual": Method(
        "continual",
        "classifier",
        "a stream of tasks learned one after another: replay, EWC, LwF against forgetting; the R matrix",
        "Wu et al. 2024 (continual learning survey)",
        continual_config.ContinualConfig,
        "lmforge.methods.continual.recipe:run",
        "lmforge.methods.continual.recipe:load_trained",
    ),
    "continual_lm": Method(
        "continual_lm",
        "causal_lm",
        "continual pretraining of a causal LM: one domain after another by SFT, with or without replay",
        "Wu et al. 2024 (continual learning survey)",
        continual_lm_config.ContinualLmConfig,
        "lmforge.methods.continual_lm.recipe:run",
        "lmforge.methods.continual_lm.recipe:load_trained",
    ),
}


def option_classes() -> dict[str, type]:
    return {name: m.options for name, m in METHODS.items()}


def resolve(dotted: str) -> Callable:
    import importlib

    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_run_config(path: Path, overrides: list[str]) -> RunConfig:
    """A recipe or a run's config.yaml, with `key=value` overrides, validated."""
    raw = apply_overrides(read_yaml(path), overrides)
    return build_config(raw, option_classes(), source=str(path), overrides=overrides)


def quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_finished_run(run_dir: Path, classifier_command: str | None = None):
    """(config, labels, model, tokenizer) of a run that has written final/; the model in eval mode,
    on the GPU when there is one. With `classifier_command` (the CLI command that needs a classifier
    on plain token ids), a run of another kind is refused with a pointer to what takes it."""
    from lmforge.models.classifier import saved_labels

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    if not (run_dir / "final").is_dir() or not (run_dir / "final.json").is_file():
        raise UserError(f"{run_dir}: the run has not finished (no final/); continue it with lmforge run --resume")
    cfg = load_run_config(run_dir / "config.yaml", [])
    method = METHODS[cfg.method]
    if classifier_command and method.kind == "causal_lm":
        raise UserError(
            f"{run_dir}: a causal-LM run (method {cfg.method}), but lmforge {classifier_command} takes "
            f"classifier runs; score it with lmforge eval-gen {run_dir} --task gsm8k|mbpp|humaneval, "
            "or generate with lmforge serve"
        )
    if classifier_command and method.kind == "tree_classifier":
        raise UserError(
            f"{run_dir}: a {cfg.method} run, whose classifier reads its own inputs, but lmforge {classifier_command} "
            f"feeds plain token ids; its evaluation is in final.json (to score other data: rerun with data.eval=...)"
        )
    if classifier_command and method.kind != "classifier":
        raise UserError(
            f"{run_dir}: a {cfg.method} run ({method.kind}), but lmforge {classifier_command} takes classifier runs"
        )
    labels = saved_labels(run_dir)
    if classifier_command and classifier_command != "probe" and not labels:  # probing reads hidden states only
        raise UserError(
            f"{run_dir}: a {cfg.method} run with no labels, whose final/ is an encoder without a classifier head "
            f"(TinyBERT's general distillation), but lmforge {classifier_command} needs a classifier run"
        )
    quiet_libraries()
    model, tokenizer = resolve(method.loader)(run_dir, cfg)
    import torch

    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return cfg, labels, model, tokenizer


def write_run_report(run_dir):
    """report.html of a run, with its method's own sections when the method has any."""
    import yaml

    from lmforge.core.report import write_report

    try:
        method = METHODS.get((yaml.safe_load(Path(run_dir, "config.yaml").read_text()) or {}).get("method"))
    except (yaml.YAMLError, AttributeError):
        method = None
    sections = resolve(method.report)(run_dir) if method and method.report else None
    return write_report(run_dir, sections)
