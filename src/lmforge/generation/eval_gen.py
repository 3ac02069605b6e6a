"""Sample completions for a task's problems, label each one, and score them: the library behind
`lmforge eval-gen`, and the sampling-and-labelling step of methods that learn from their own samples
(V-STaR samples k completions per training problem and keeps the labelled ones).

    sampled = sample_and_label(task, problems, generator, SamplingParams(n=4, temperature=0.8, ...))
    sampled.samples[i].passed, .status, .answer        # one Sample per (problem, sample index)
    generation_metrics(task, problems, sampled.samples, ks=[1, 4])   # pass@k, majority vote, counts

Labels: answer tasks (GSM8K) are checked in this process (`task.is_correct`, with the extracted
answer kept for majority voting); code tasks (MBPP, HumanEval) build each sample's program
(`task.program_for`) and run it in `generation/sandbox.py`. Identical programs run once: a small model
often writes the same program several times, and a program's verdict depends only on its text.

Metrics: pass@k with the unbiased estimator of Chen et al. 2021 (eq. 1) from each problem's
(samples, correct) counts, averaged over problems; for answer tasks, the self-consistency majority
vote (Wang et al. 2023): a problem counts as solved when its most frequent extracted answer is the
gold one.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lmforge.core.metrics import majority_vote, mean_pass_at_k
from lmforge.errors import UserError
from lmforge.generation.sampling import Completion, Generator, SamplingParams
from lmforge.tasks.base import Problem, Task

# Task-appropriate defaults of max_new_tokens (eval-gen's --max-new-tokens, V-STaR's sampling), from the
# reference completions in Gemma 3's tokenizer
# (measured: GSM8K dev median 85, 99th percentile 257, longest 310 tokens; MBPP test 49 / 238 / 285;
# HumanEval 55 / 208 / 295): room for the longest reference and some wordiness. Stop sequences end
# most samples long before the limit.
DEFAULT_MAX_NEW_TOKENS = {"gsm8k": 320, "mbpp": 384, "humaneval": 384}
FALLBACK_MAX_NEW_TOKENS = 256

# Statuses of answer-task samples; code-task samples carry the sandbox's (generation.sandbox.STATUSES).
ANSWER_STATUSES = ("correct", "wrong", "no_answer")
# At most this much of a failed program's last stderr line is kept with its sample.
ERROR_CHARS = 300


@dataclass(frozen=True)
class Sample:
    """One labelled completion: sample `index` (0 <= index < n) of problem `problem_id`."""

    problem_id: str
    index: int
    completion: str
    """the generated text, cut before the first stop string"""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (max_new_tokens reached)"""
    tokens: int
    """generated tokens"""
    passed: bool
    """the verdict: the answer is the gold one (answer tasks) or the program passed its tests (code tasks)"""
    status: str
    """answer tasks: correct / wrong / no_answer; code tasks: the sandbox status (passed, failed, timeout, ...)"""
    answer: str | None = None
    """answer tasks: the extracted, normalised answer (None when the completion has no number)"""
    gold: str | None = None
    """answer tasks: the gold answer"""
    error: str | None = None
    """code tasks: the last line of a failed program's stderr (e.g. "AssertionError"), cut to 300 characters"""
    exec_seconds: float | None = None
    """code tasks: the program's run time in the sandbox"""


@dataclass(frozen=True)
class SampledProblems:
    """The labelled samples of `sample_and_label`, problem by problem (sample 0 .. n-1 of each), and timings."""

    samples: list[Sample]
    generation_seconds: float
    label_seconds: float
    """time to label every sample: the sandbox's wall-clock time for code tasks"""

    @property
    def generated_tokens(self) -> int:
        return sum(s.tokens for s in self.samples)


def sample_and_label(
    task: Task,
    problems: Sequence[Problem],
    generator: Generator,
    params: SamplingParams,
    *,
    workers: int = 2,
    timeout_s: float = 10.0,
    progress: bool = False,
) -> SampledProblems:
    """Generate `params.n` completions per problem (stopping at the task's stop strings as well as
    `params.stop`), then label every one; see `label_completions` for the labels.

    `workers` and `timeout_s` are the sandbox's (code tasks): programs run at a time, seconds per program.
    """
    if not problems:
        raise UserError(f"{task.name}: no problems to sample")
    # The task's stop strings always apply: scoring cuts there anyway, and generating past them is wasted time.
    params = replace(params, stop=tuple(dict.fromkeys((*params.stop, *task.stop))))  # in order, no repeats
    started = time.perf_counter()
    completions = generator.generate([p.prompt for p in problems], params, progress=progress)
    generation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    samples = label_completions(task, problems, completions, workers=workers, timeout_s=timeout_s, progress=progress)
    return SampledProblems(samples, generation_seconds, time.perf_counter() - started)


def label_completions(
    task: Task,
    problems: Sequence[Problem],
    completions: Sequence[Sequence[Completion]],
    *,
    workers: int = 2,
    timeout_s: float = 10.0,
    progress: bool = False,
) -> list[Sample]:
    """A `Sample` for every completion: `completions[i]` are the completions of `problems[i]`.

    Answer tasks: `task.is_correct` gives the verdict and `task.extract_answer` the answer kept for
    voting; status "no_answer" when no answer could be read. Code tasks: `task.program_for` builds
    the program (solution + tests) and `generation.sandbox.run_many` runs it, `workers` at a time, each
    for at most `timeout_s` seconds; identical programs run once.
    """
    if len(completions) != len(problems):
        raise ValueError(f"{len(problems)} problems but completions for {len(completions)}")
    pairs = [(problem, j, c) for problem, cs in zip(problems, completions) for j, c in enumerate(cs)]
    if task.program_for is not None:
        return _label_programs(task, pairs, workers, timeout_s, progress)
    if task.is_correct is None or task.extract_answer is None:
        raise ValueError(f"task {task.name!r} has neither program_for nor is_correct and extract_answer")
    samples = []
    for problem, j, c in pairs:
        answer = task.extract_answer(c.text)
        passed = task.is_correct(problem, c.text)
        status = "correct" if passed else ("no_answer" if answer is None else "wrong")
        gold = problem.data.get("answer")
        samples.append(
            Sample(
                problem.id,
                j,
                c.text,
                c.finish_reason,
                c.tokens,
                passed,
                status,
                answer=answer,
                gold=None if gold is None else str(gold),
            )
        )
    return samples


def _label_programs(task: Task, pairs: list, workers: int, timeout_s: float, progress: bool) -> list[Sample]:
    from lmforge.generation.sandbox import run_many

    programs = [task.program_for(problem, c.text) for problem, _, c in pairs]
    unique = list(dict.fromkeys(programs))  # first-seen order: the run order does not depend on hashing
    results = dict(zip(unique, run_many(unique, workers=workers, progress=progress, timeout_s=timeout_s)))
    samples = []
    for (problem, j, c), program in zip(pairs, programs):
        result = results[program]
        error = None
        if not result.passed:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            error = lines[-1][:ERROR_CHARS] if lines else None
        samples.append(
            Sample(
                problem.id,
                j,
                c.text,
                c.finish_reason,
                c.tokens,
                result.passed,
                result.status,
                error=error,
                exec_seconds=round(result.seconds, 4),
            )
        )
    return samples


def by_problem(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """The samples of each problem id, in the order the problems first appear."""
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.problem_id, []).append(sample)
    return grouped


def parse_ks(text: str, n: int) -> list[int]:
    """The k values of a comma list such as "1,4" (sorted, without repeats); each must be 1 <= k <= n."""
    ks = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UserError(f"--k {text!r}: expected a comma list of positive integers such as 1,4")
        ks.append(int(part))
    too_big = [k for k in ks if k > n]
    if too_big:
        raise UserError(
            f"--k {max(too_big)}: pass@{max(too_big)} needs at least {max(too_big)} samples per problem, "
            f"but --n is {n}; raise --n or lower --k"
        )
    return sorted(set(ks))


def generation_metrics(task: Task, problems: Sequence[Problem], samples: Sequence[Sample], ks: Sequence[int]) -> dict:
    """pass@k for each k (unbiased, averaged over problems), counts, and for answer tasks the
    majority-vote accuracy (when a problem has more than one sample) and the share of samples with
    no answer. Every problem must have at least max(ks) samples."""
    grouped = by_problem(samples)
    missing = [p.id for p in problems if p.id not in grouped]
    if missing:
        raise ValueError(f"no samples for {len(missing)} problem(s), e.g. {missing[0]}")
    counts = [(len(grouped[p.id]), sum(s.passed for s in grouped[p.id])) for p in problems]  # (n, c) each
    sizes = sorted({n for n, _ in counts})
    metrics: dict = {
        "problems": len(problems),
        "samples": sum(n for n, _ in counts),
        "samples_per_problem": sizes[0] if len(sizes) == 1 else sizes,
        "correct_samples": sum(c for _, c in counts),
        "solved_problems": sum(c > 0 for _, c in counts),
        "pass@k": {str(k): mean_pass_at_k(counts, k) for k in ks},
    }
    if task.program_for is None:
        if max(sizes) > 1:
            gold = {p.id: str(p.data["answer"]) for p in problems}
            votes = [majority_vote([s.answer for s in grouped[p.id]]) == gold[p.id] for p in problems]
            metrics["majority_vote_accuracy"] = sum(votes) / len(votes)
        metrics["no_answer_samples"] = sum(s.status == "no_answer" for s in samples)
    metrics["statuses"] = dict(Counter(s.status for s in samples).most_common())
    metrics["finish_reasons"] = dict(Counter(s.finish_reason for s in samples).most_common())
    return metrics


def write_samples(path: Path, samples: Sequence[Sample]) -> None:
    """One JSON line per sample, written to a temporary file and renamed: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(asdict(sample), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
