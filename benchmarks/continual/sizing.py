"""How long the continual benchmark's CPU profile takes, part by part: a cost model, not a measurement.

A MiniLM step (batch 32, max_length 64, full fine-tuning) costs STEP_S on 2 idle cores; an evaluated
example a third of a trained one (a forward pass without the backward); each strategy multiplies the
steps of the tasks after the first (replay adds a replayed micro-batch as large as the task's, LwF a
teacher forward, EWC the penalty over every weight), and LoRA steps cost LORA_FACTOR of a full one. The
row of scores after each task evaluates every task, so a T-task stream evaluates (T + 1) x T held-out
splits, and each child run its own once more.
"""

from __future__ import annotations

STEP_S = 0.85  # benchmarks/finetune/RESULTS.md: MiniLM full fine-tuning 0.858 s/step, machine otherwise idle
EVAL_EXAMPLE_S = STEP_S / 32 / 3
LORA_FACTOR = 0.64  # the same RESULTS.md: LoRA / full s/step
LATER_TASK_FACTOR = {"replay": 2.0, "lwf": 1.33, "ewc": 1.1}
FISHER_EXAMPLE_S = 0.2  # one backward through a batch of 8 per example (ewc.diagonal_fisher's exact gradients)
STREAM_START_S, TASK_S, MODEL_LOAD_S = 15.0, 5.0, 1.0  # imports and encoding; a task's load and save; a load
# Gemma 3 270M, 4 pairs a step, full fine-tuning: about half of the 10.5 / 15.5 s of benchmarks/vstar's
# SFT steps of 8 pairs (GSM8K / MBPP), plus the full model's weight gradients and AdamW update
GEMMA_STEP_S = {"gsm8k": 7.0, "mbpp": 10.0}
GEMMA_PAIR_EVAL_S, GEMMA_TASK_S, GEMMA_START_S = 0.5, 60.0, 30.0


def stream_seconds(strategy: str, tasks: int, train_examples: int, eval_examples: int, fisher: int) -> float:
    steps = train_examples / 32
    if strategy == "joint":  # one child run over every task; scores before and after
        evaluated = (2 * tasks + tasks) * eval_examples
        return STREAM_START_S + TASK_S + tasks * steps * STEP_S + evaluated * EVAL_EXAMPLE_S
    first = LORA_FACTOR if strategy in ("adapters", "olora") else 1.0
    later = first * LATER_TASK_FACTOR.get(strategy, 1.0)
    seconds = STREAM_START_S + tasks * TASK_S + steps * STEP_S * (first + (tasks - 1) * later)
    seconds += ((tasks + 1) * tasks + tasks) * eval_examples * EVAL_EXAMPLE_S
    if strategy == "ewc":
        seconds += (tasks - 1) * fisher * FISHER_EXAMPLE_S
    if strategy == "adapters":  # each task of each row of scores loads its own model and LoRA
        seconds += (tasks + 1) * tasks * MODEL_LOAD_S
    return seconds


def part_seconds(profile: dict, seeds: list[int], lm_seeds: list[int], rounds: int) -> dict[str, float]:
    from bench import CLASS_STRATEGIES, KNOBS, STRATEGIES, STREAM

    n, e, f = profile["train_examples"], profile["eval_examples"], profile["fisher_examples"]
    T = len(STREAM)
    tune = sum(len(values) * stream_seconds(s, T, n, e, f) for s, (_, values, _) in KNOBS.items())
    task = sum(len(seeds) * (1 if s == "joint" else 2) * stream_seconds(s, T, n, e, f) for s in STRATEGIES)
    klass = sum(len(seeds) * stream_seconds(s, 2, n, e, f) for s in CLASS_STRATEGIES)
    steps = int(next(x for x in profile["lm_sets"] if x.startswith("train.max_steps=")).split("=")[1])
    lm_stream = GEMMA_START_S + sum(steps * s + GEMMA_TASK_S for s in GEMMA_STEP_S.values())
    lm_stream += (3 * 2 * 50 + 2 * 50) * GEMMA_PAIR_EVAL_S  # rows 0-2 on both held-out sets; each child's own
    speed_stream = {s: stream_seconds(s, 2, 32 * profile["speed_steps"], 64, 64) for s in ("sequential", "ewc", "lwf")}
    return {
        "tune": tune,
        "quality (task-incremental)": task,
        "quality (class-incremental)": klass,
        "lm": 2 * len(lm_seeds) * lm_stream,
        "speed": (rounds + 1) * sum(speed_stream.values()),
    }


def print_estimate(profile: dict, seeds: list[int], lm_seeds: list[int], rounds: int) -> None:
    parts = part_seconds(profile, seeds, lm_seeds, rounds)
    print("| part | estimated minutes (2 idle cores) |\n|---|---|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds / 60:.0f} |")
    print(f"| total | {sum(parts.values()) / 60:.0f} ({sum(parts.values()) / 3600:.1f} hours) |")
