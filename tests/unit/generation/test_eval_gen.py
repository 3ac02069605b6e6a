"""Sampling and labelling (generation/eval_gen.py): the structure of what a tiny random model gives, and the
verdicts and metrics proven on the tasks' own reference completions (which must pass) and on wrong ones."""

from dataclasses import replace

import pytest
from tiny_server import tiny_generator  # noqa: F401 (fixture)

from lmforge.core.metrics import mean_pass_at_k, pass_at_k
from lmforge.errors import UserError
from lmforge.generation import sandbox
from lmforge.generation.eval_gen import (
    ANSWER_STATUSES,
    by_problem,
    generation_metrics,
    label_completions,
    parse_ks,
    sample_and_label,
    write_samples,
)
from lmforge.generation.sampling import Completion, SamplingParams
from lmforge.tasks import load_task


class ScriptedGenerator:
    """A stand-in for the model (the Generator protocol): sample j of a prompt is `script(problem, j)`.

    It records the sampling parameters it was called with.
    """

    def __init__(self, problems, script):
        self.by_prompt = {p.prompt: p for p in problems}
        self.script = script
        self.calls = []

    def generate(self, prompts, params, progress=False):
        self.calls.append(params)
        return [
            [Completion(self.script(self.by_prompt[prompt], j), 7, "stop") for j in range(params.n)]
            for prompt in prompts
        ]


def reference(problem, j):
    return problem.reference


def problems_of(name, limit):
    task = load_task(name)
    problems = task.problems(task.eval_split, limit=limit, **({"shots": 0} if name == "gsm8k" else {}))
    return task, problems


def zero_shot_mbpp(limit):
    """MBPP problems with only their own block as the prompt: the 3-shot prompt passes tiny-gpt2's 1,024 positions."""
    task, problems = problems_of("mbpp", limit)
    return task, [replace(p, prompt=p.prompt.rsplit("[DONE]\n", 1)[1]) for p in problems]


# ---- a tiny random model: structure and counts --------------------------------------------------


def test_tiny_model_gsm8k_samples_are_labelled_in_problem_order(tiny_generator):
    task, problems = problems_of("gsm8k", 2)
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=16, seed=1)
    sampled = sample_and_label(task, problems, tiny_generator, params)
    samples = sampled.samples
    assert [(s.problem_id, s.index) for s in samples] == [(p.id, j) for p in problems for j in range(3)]
    assert len({s.completion for s in samples}) > 1  # sampled, not greedy
    for s, problem in zip(samples, [p for p in problems for _ in range(3)]):
        assert s.status in ANSWER_STATUSES and s.passed == (s.status == "correct")
        assert s.gold == problem.data["answer"] and s.answer == task.extract_answer(s.completion)
        assert 1 <= s.tokens <= 16 and s.finish_reason in ("stop", "length")
        assert s.error is None and s.exec_seconds is None
    assert sampled.generated_tokens == sum(s.tokens for s in samples) and sampled.generation_seconds > 0

    metrics = generation_metrics(task, problems, samples, [1, 2, 3])
    counts = [(3, sum(s.passed for s in group)) for group in by_problem(samples).values()]
    assert metrics["pass@k"] == {str(k): mean_pass_at_k(counts, k) for k in (1, 2, 3)}
    assert metrics["problems"] == 2 and metrics["samples"] == 6 and metrics["samples_per_problem"] == 3
    assert metrics["correct_samples"] == sum(s.passed for s in samples)
    assert sum(metrics["statuses"].values()) == 6 and sum(metrics["finish_reasons"].values()) == 6
    assert "majority_vote_accuracy" in metrics and metrics["no_answer_samples"] == metrics["statuses"].get(
        "no_answer", 0
    )


def test_tiny_model_mbpp_programs_run_in_the_sandbox_and_fail(tiny_generator):
    task, problems = zero_shot_mbpp(2)
    sampled = sample_and_label(task, problems, tiny_generator, SamplingParams(n=2, temperature=1.0, max_new_tokens=16))
    assert len(sampled.samples) == 4
    for s in sampled.samples:
        assert s.status in sandbox.STATUSES and not s.passed and s.status != "passed"
        assert s.exec_seconds is not None and s.error  # e.g. "SyntaxError: invalid syntax"
        assert s.answer is None and s.gold is None
    metrics = generation_metrics(task, problems, sampled.samples, [1, 2])
    assert metrics["pass@k"] == {"1": 0.0, "2": 0.0} and metrics["solved_problems"] == 0
    assert "majority_vote_accuracy" not in metrics


# ---- verdicts on real references ---------------------------------------------------------------


@pytest.mark.parametrize("name, limit", [("gsm8k", 5), ("mbpp", 4), ("humaneval", 3)])
def test_reference_completions_pass(name, limit):
    task, problems = problems_of(name, limit)
    generator = ScriptedGenerator(problems, reference)
    sampled = sample_and_label(task, problems, generator, SamplingParams(max_new_tokens=8))
    assert all(s.passed for s in sampled.samples), [(s.problem_id, s.status, s.error) for s in sampled.samples]
    assert {s.status for s in sampled.samples} == {"correct" if name == "gsm8k" else "passed"}
    assert generation_metrics(task, problems, sampled.samples, [1])["pass@k"] == {"1": 1.0}
    assert set(task.stop) <= set(generator.calls[0].stop)  # the task's stop strings are always asked for


@pytest.mark.parametrize(
    "name, wrong, status, error",
    [
        ("gsm8k", " She pays 3 + 4 = 7 dollars.\n#### 123456789", "wrong", None),
        ("gsm8k", " I do not know.", "no_answer", None),
        ("mbpp", "def unrelated():\n    return 0\n", "failed", "NameError"),
        ("mbpp", "import sys\nsys.exit(0)\n", "exited_early", None),
    ],
)
def test_wrong_completions_fail(name, wrong, status, error):
    task, problems = problems_of(name, 2)
    generator = ScriptedGenerator(problems, lambda problem, j: wrong)
    samples = sample_and_label(task, problems, generator, SamplingParams()).samples
    assert [(s.passed, s.status) for s in samples] == [(False, status)] * 2
    if error:
        assert all(error in s.error for s in samples)
    assert generation_metrics(task, problems, samples, [1])["pass@k"] == {"1": 0.0}


def test_pass_at_k_and_majority_vote_follow_the_verdicts():
    # problem 0: all 4 samples right; problem 1: only sample 0 right, the 3 others agree on a wrong answer
    task, problems = problems_of("gsm8k", 2)
    first = problems[0].id

    def script(problem, j):
        return problem.reference if problem.id == first or j == 0 else " 2 + 2 = 5\n#### 5"

    samples = sample_and_label(task, problems, ScriptedGenerator(problems, script), SamplingParams(n=4)).samples
    metrics = generation_metrics(task, problems, samples, [1, 2, 4])
    assert metrics["pass@k"]["1"] == pytest.approx((1 + 0.25) / 2)
    assert metrics["pass@k"]["2"] == pytest.approx((1 + pass_at_k(4, 1, 2)) / 2)  # pass_at_k(4, 1, 2) = 0.5
    assert metrics["pass@k"]["4"] == 1.0
    assert metrics["majority_vote_accuracy"] == 0.5  # problem 1's vote is the wrong 5
    assert (metrics["correct_samples"], metrics["solved_problems"]) == (5, 2)
    assert metrics["statuses"] == {"correct": 5, "wrong": 3}


def test_identical_programs_run_once(monkeypatch):
    task, problems = problems_of("mbpp", 2)
    ran = []
    real = sandbox.run_many

    def counting_run_many(programs, **kw):
        ran.extend(programs)
        return real(programs, **kw)

    monkeypatch.setattr(sandbox, "run_many", counting_run_many)
    completions = [[Completion(p.reference, 5, "stop")] * 3 for p in problems]
    samples = label_completions(task, problems, completions)
    assert len(samples) == 6 and all(s.passed for s in samples)
    assert len(ran) == 2


def test_parse_ks():
    assert parse_ks("1,4", 4) == [1, 4]
    assert parse_ks(" 4, 1,1", 10) == [1, 4]
    with pytest.raises(UserError, match="pass@5 needs at least 5 samples per problem, but --n is 4"):
        parse_ks("1,5", 4)
    for bad in ("", "a", "0", "1,-2", "1.5"):
        with pytest.raises(UserError, match="comma list of positive integers"):
            parse_ks(bad, 4)


def test_samples_file_is_one_json_line_per_sample(tmp_path):
    import json

    task, problems = problems_of("gsm8k", 2)
    samples = sample_and_label(task, problems, ScriptedGenerator(problems, reference), SamplingParams(n=2)).samples
    path = tmp_path / "samples.jsonl"
    write_samples(path, samples)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    expected = [(s.problem_id, s.index, True) for s in samples]
    assert [(r["problem_id"], r["index"], r["passed"]) for r in rows] == expected
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was renamed
