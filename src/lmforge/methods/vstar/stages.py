"""V-STaR's checkpointed stages: each one's output is a file or a finished run folder under
RUN_DIR/stages/, written atomically, so an interrupted run resumes at the first unfinished stage and
never samples again what it already sampled.

    stages/generator-1/          G^1 = G_SFT: the sft method on D_SFT (a finished sft run folder)
    stages/generator-1.jsonl     its training pairs (D_GEN at that round)
    stages/samples-1.jsonl       k labelled samples per training problem from G^1
    stages/generator-2/ ...      G^2 on D_SFT + the correct samples of round 1, and so on to G^T
    stages/verifier/             the DPO verifier (verifier.py), from G_SFT
    stages/test-<t>.jsonl        N labelled candidates per test problem from G^t
    stages/scores-<t>.jsonl      every candidate's verifier scores
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from lmforge.config import DataConfig, RunConfig
from lmforge.core.console import say
from lmforge.core.eval_gen import Sample, SampledProblems, sample_and_label, write_samples
from lmforge.core.eval_gen_command import DEFAULT_MAX_NEW_TOKENS, FALLBACK_MAX_NEW_TOKENS
from lmforge.core.generate import HFGenerator, SamplingParams
from lmforge.methods.sft.config import SftConfig
from lmforge.methods.sft.data import Pair
from lmforge.tasks.base import Problem, Task

# Held-out pairs of each generator's SFT: the evaluation loss is a progress signal only, read on the
# test problems' reference solutions (never trained on) so that no training pair is held out of D_GEN.
HELD_OUT_PAIRS = 50


def is_main_process() -> bool:
    """Under `accelerate launch` (a process per device) only process 0 samples, scores and writes files;
    the training stages run on every process."""
    return os.environ.get("RANK", "0") == "0"


def wait_for(path: Path, poll_seconds: float = 5.0) -> None:
    """The other processes wait until process 0 has written a stage's output."""
    while not path.exists():
        time.sleep(poll_seconds)


def training_pair(problem: Problem, completion: str, task: Task) -> Pair:
    """A (prompt, completion) pair for SFT and DPO: the completion ends as the task's exemplars do."""
    return Pair(problem.prompt, completion + task.answer_end, problem.id)


def reference_samples(problems: Sequence[Problem]) -> list[Sample]:
    """The training set's reference solutions as correct samples: they count in D_GEN and D_VER alike."""
    return [Sample(p.id, -1, p.reference, "stop", 0, True, "reference") for p in problems]


def write_pairs(path: Path, pairs: Sequence[Pair]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps({"prompt": pair.prompt, "completion": pair.completion, "id": pair.where}) + "\n")
    os.replace(tmp, path)


def read_samples(path: Path) -> list[Sample]:
    return [Sample(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_generator(cfg: RunConfig, stages: Path, t: int, pairs: Sequence[Pair], held_out: str) -> Path:
    """G^t: the sft method from the base model (`model.name`) on `pairs`, with the run's `train.*`
    settings; reused when finished, resumed from its last checkpoint when interrupted."""
    from lmforge.methods.sft.recipe import run as sft_run

    folder = stages / f"generator-{t}"
    if (folder / "final.json").is_file():
        say(f"generator {t}: finished earlier ({folder})")
        return folder
    data_file = stages / f"generator-{t}.jsonl"
    if not is_main_process():
        wait_for(data_file)
    elif not (folder / "config.yaml").is_file():
        write_pairs(data_file, pairs)
    v = cfg.options
    sft_cfg = RunConfig(
        method="sft",
        model=cfg.model,
        data=DataConfig(train=str(data_file), eval=held_out, max_eval_examples=HELD_OUT_PAIRS),
        train=cfg.train,
        options=SftConfig(
            lora=v.lora,
            lora_r=v.lora_r,
            lora_alpha=v.lora_alpha,
            lora_dropout=v.lora_dropout,
            target_modules=list(v.target_modules),
        ),
    )
    say(f"generator {t}: SFT of {cfg.model.name} on {len(pairs):,} pairs (D_GEN)")
    sft_run(sft_cfg, folder, resume=(folder / "config.yaml").is_file())
    return folder


def device() -> str:
    """Where generation and scoring run: the GPU when there is one (training goes through Accelerate)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sampling_params(cfg: RunConfig, task: Task, n: int) -> SamplingParams:
    v = cfg.options
    max_new = v.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(task.name, FALLBACK_MAX_NEW_TOKENS)
    return SamplingParams(n=n, temperature=v.temperature, top_p=v.top_p, max_new_tokens=max_new, seed=v.seed)


def sample_stage(
    path: Path, task: Task, problems: Sequence[Problem], model_dir: Path, params: SamplingParams, cfg
) -> list[Sample]:
    """`params.n` labelled samples per problem from the model of `model_dir`, kept in `path`."""
    from lmforge.core.causal_lm import load_causal_lm
    from lmforge.core.openai_client import OpenAIGenerator

    if path.is_file():
        say(f"{path.name}: sampled earlier")
        return read_samples(path)
    if not is_main_process():
        wait_for(path)
        return read_samples(path)
    v = cfg.options
    say(f"{path.name}: {params.n} samples for each of {len(problems):,} problems from {model_dir.parent.name}")
    if v.backend == "openai":  # the server loads this stage's model under a name of its own
        generator = OpenAIGenerator(model_dir.parent.name, base_url=v.base_url, concurrency=v.concurrency)
        generator.load_adapter(f"{model_dir.parents[2].name}/{model_dir.parent.name}", model_dir.resolve())
    else:
        model, tokenizer = load_causal_lm(str(model_dir))
        generator = HFGenerator(model.to(device()), tokenizer, batch_size=v.generation_batch_size)
    sampled: SampledProblems = sample_and_label(
        task, problems, generator, params, workers=v.sandbox_workers, progress=True
    )
    write_samples(path, sampled.samples)
    timing = {"generation_seconds": sampled.generation_seconds, "label_seconds": sampled.label_seconds,
              "generated_tokens": sampled.generated_tokens}  # fmt: skip
    path.with_suffix(".timing.json").write_text(json.dumps(timing) + "\n")
    return sampled.samples
