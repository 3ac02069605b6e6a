"""V-STaR's checkpointed stages: each one's output is a file or a finished run folder under
RUN_DIR/stages/, written atomically, so an interrupted run resumes at the first unfinished stage and
never samples again what it already sampled. The files are the kernel's stages (`core/stages.py`:
written under a temporary name and renamed, their settings kept in `<name>.stage.json` and a stage
made with other settings refused); the models are its child runs (reused when finished, resumed
when interrupted).

    stages/generator-1/          G^1 = G_SFT: the sft method on D_SFT (a finished sft run folder)
    stages/generator-1.jsonl     its training pairs (D_GEN at that round)
    stages/samples-1.jsonl       k labelled samples per training problem from G^1
    stages/generator-2/ ...      G^2 on D_SFT + the correct samples of round 1, and so on to G^T
    stages/verifier/             the DPO verifier (verifier.py), from G_SFT
    stages/orm/                  the ORM baseline (orm.py), when vstar.orm.enabled
    stages/test-<t>.jsonl        N labelled candidates per test problem from G^t
    stages/*.jsonl.partial       a sampling stage's finished problems so far (gone once it finishes)
    stages/*.jsonl.stage.json    the settings a stage file was made with (its model, problems, sampling)
    stages/scores-<t>.jsonl      every candidate's verifier scores

Samples are `generation.eval_gen.Sample` rows; the reference solutions of D_SFT join D_VER as samples with
index -1 and status "reference".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

from lmforge.config import DataConfig, RunConfig
from lmforge.core.console import say
from lmforge.core.rundir import write_text_atomic
from lmforge.core.stages import FINISHED, FRESH, child_run, finished_stage, make_stage
from lmforge.data.pairs import Encoded, Pair, encode_pair
from lmforge.generation.eval_gen import (
    DEFAULT_MAX_NEW_TOKENS,
    FALLBACK_MAX_NEW_TOKENS,
    Sample,
    SampledProblems,
    sample_and_label,
    write_samples,
)
from lmforge.generation.generate import HFGenerator
from lmforge.generation.sampling import SamplingParams
from lmforge.methods.sft.config import SftConfig
from lmforge.tasks.base import Problem, Task

# Held-out pairs of each generator's SFT: the evaluation loss is a progress signal only, read on the
# test problems' reference solutions (never trained on) so that no training pair is held out of D_GEN.
HELD_OUT_PAIRS = 50
CARVE_SEED = 2024  # which problems the verifiers hold out does not depend on the run's seed
CHUNK_BATCHES = 4  # a sampling stage keeps its work every this many generation batches


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


def carve_by_problem(items: Sequence, share: float = 0.1, at_most: int = 20) -> tuple[list, list]:
    """(training items, held-out items): the items (anything with a `problem_id`) of a seeded sample of
    the problems (`share` of them, at most `at_most`, at least one when there are two) are held out,
    so that no problem is on both sides."""
    problems = sorted({x.problem_id for x in items})
    n = min(at_most, int(len(problems) * share)) or (1 if len(problems) > 1 else 0)
    held = set(random.Random(CARVE_SEED).sample(problems, n))
    return [x for x in items if x.problem_id not in held], [x for x in items if x.problem_id in held]


def encode_solutions(tokenizer, prompts: dict[str, str], samples: Sequence, answer_end: str) -> Encoded:
    """Every sample's tokens (prompt, completion as trained, EOS), with no length limit: the samples
    were generated at these lengths."""
    ids, prompt_lengths = [], []
    for s in samples:
        encoded = encode_pair(tokenizer, prompts[s.problem_id], s.completion + answer_end, 1 << 30)
        ids.append(encoded[0])
        prompt_lengths.append(encoded[1])
    return Encoded(ids, prompt_lengths)


def verifier_run_config(cfg: RunConfig, gsft_dir: Path, opts, data: str) -> RunConfig:
    """The run config of a verifier trained from G_SFT (`opts`: vstar.verifier or vstar.orm): its own
    rate, epochs and batches; no weight decay; evaluation and a checkpoint once per epoch. Its
    config.yaml names G_SFT as the base model, so `load_causal_lm` finds what its adapter adapts."""
    return RunConfig(
        method="vstar",
        model=dataclasses.replace(cfg.model, name=str(gsft_dir)),
        data=DataConfig(train=data, eval=""),
        train=dataclasses.replace(
            cfg.train, lr=opts.lr, epochs=opts.epochs, max_steps=0, batch_size=opts.batch_size,
            grad_accum=opts.grad_accum, weight_decay=0.0, eval_every=0, save_every=0, early_stopping_patience=0,
        ),
        options=cfg.options,
    )  # fmt: skip


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

    child = child_run(stages, f"generator-{t}")
    if child.state == FINISHED:
        say(f"generator {t}: finished earlier ({child.folder})")
        return child.folder
    data_file = stages / f"generator-{t}.jsonl"
    if not is_main_process():
        wait_for(data_file)
    elif child.state == FRESH:  # an interrupted run goes on with the pairs it started with
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
    sft_run(sft_cfg, child.folder, resume=child.resume)
    return child.folder


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
    """`params.n` labelled samples per problem from the model of `model_dir`, kept in `path`.

    The problems are sampled a chunk at a time (about CHUNK_BATCHES generation batches) and the
    finished ones kept in PATH.partial, so an interrupted stage resumes after its last finished chunk.
    A sample's seed depends on its prompt and index only (generation.generate), so the resumed stage gives
    what an uninterrupted one would have.
    """
    settings = {
        "model": f"{model_dir.parent.name}/{model_dir.name}",  # within the run folder: a copied run still matches
        "task": task.name,
        "problems": fingerprint([[p.id, p.prompt] for p in problems]),
        "sampling": dataclasses.asdict(params),
    }
    if finished_stage(path.parent, path.name, settings):
        say(f"{path.name}: sampled earlier")
        return read_samples(path)
    if not is_main_process():
        wait_for(path)
        return read_samples(path)
    v = cfg.options
    order = {p.id: i for i, p in enumerate(problems)}
    partial = path.with_name(path.name + ".partial")
    kept = json.loads(partial.read_text(encoding="utf-8")) if partial.is_file() else {}
    samples = [Sample(**s) for s in kept.get("samples", []) if s["problem_id"] in order]
    timing = {key: kept.get(key, 0) for key in ("generation_seconds", "label_seconds", "generated_tokens")}
    done = {s.problem_id for s in samples}
    todo = [p for p in problems if p.id not in done]
    source = model_dir.parent.name
    if done:
        say(f"{path.name}: {len(done):,} of {len(problems):,} problems sampled earlier; the rest from {source}")
    else:
        say(f"{path.name}: {params.n} samples for each of {len(problems):,} problems from {source}")
    if todo:
        generator = stage_generator(model_dir, cfg)
        batch = v.concurrency if v.backend == "openai" else v.generation_batch_size
        per_chunk = -(-CHUNK_BATCHES * batch // params.n)  # ceil: whole problems, at least one
        for start in range(0, len(todo), per_chunk):
            chunk = todo[start : start + per_chunk]
            sampled: SampledProblems = sample_and_label(
                task, chunk, generator, params, workers=v.sandbox_workers, progress=True
            )
            samples += sampled.samples
            timing["generation_seconds"] += sampled.generation_seconds
            timing["label_seconds"] += sampled.label_seconds
            timing["generated_tokens"] += sampled.generated_tokens
            kept = {**timing, "samples": [dataclasses.asdict(s) for s in samples]}
            write_text_atomic(partial, json.dumps(kept, ensure_ascii=False))
    samples.sort(key=lambda s: (order[s.problem_id], s.index))
    make_stage(path.parent, path.name, settings, lambda tmp: write_samples(tmp, samples))
    path.with_suffix(".timing.json").write_text(json.dumps(timing) + "\n")
    partial.unlink(missing_ok=True)
    return samples


def fingerprint(rows: list) -> str:
    """A short hash of JSON-able rows, for a stage's settings: which problems or candidates it was made from."""
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def stage_generator(model_dir: Path, cfg):
    """The generator of a sampling stage: the run's backend serving the model of `model_dir`."""
    from lmforge.generation.openai_client import OpenAIGenerator
    from lmforge.models.causal_lm import load_causal_lm

    v = cfg.options
    if v.backend == "openai":  # the server loads this stage's model under a name of its own
        generator = OpenAIGenerator(model_dir.parent.name, base_url=v.base_url, concurrency=v.concurrency)
        generator.load_adapter(f"{model_dir.parents[2].name}/{model_dir.parent.name}", model_dir.resolve())
        return generator
    model, tokenizer = load_causal_lm(str(model_dir))
    return HFGenerator(model.to(device()), tokenizer, batch_size=v.generation_batch_size)
