import json

import pytest

from lmforge.errors import UserError
from lmforge.generation.sandbox import run_many, run_python
from lmforge.generation.sandbox_checks import Check
from lmforge.tasks import mbpp
from lmforge.tasks.base import Problem


def test_splits_have_the_documented_sizes_and_files():
    files = {}
    for split in mbpp.SPLITS:
        problems = mbpp.problems(split)
        ids = [int(p.id.split("/")[1]) for p in problems]
        assert ids == sorted(ids) and all(i in mbpp.IDS[split] for i in ids)
        files[split] = (len(problems), sum(p.data["file"] == "sanitized-mbpp.json" for p in problems))
    assert files == {
        "prompt": (7, 7),
        "test": (257, 257),
        "test_full": (500, 0),
        "validation": (90, 43),
        "train": (374, 120),
    }


def test_prompt_is_the_three_shot_format_of_the_paper():
    problem = mbpp.problems("test", limit=1)[0]
    assert problem.id == "mbpp/11"
    assert problem.prompt.startswith(
        "You are an expert Python programmer, and here is your task: Write a function to find the shared elements"
        " from the given two lists. Your code should pass these tests:\n\nassert set(similar_elements("
    )
    assert problem.prompt.count("You are an expert Python programmer") == 4
    assert problem.prompt.count("[BEGIN]\n") == 4 and problem.prompt.count("\n[DONE]\n") == 3
    assert "return largest_nums\n[DONE]\nYou are an expert" in problem.prompt
    tests = "\n".join(problem.data["tests"])
    assert problem.prompt.endswith(f"{problem.data['text']} Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")
    assert "\r" not in problem.prompt and "\r" not in mbpp.problems("test_full", limit=1)[0].reference


def test_fewer_shots_keep_the_problem_block():
    three = mbpp.problems("train", limit=1)[0]
    zero = mbpp.problems("train", limit=1, shots=0)[0]
    assert zero.prompt.startswith("You are an expert Python programmer, and here is your task: ")
    assert zero.prompt.count("[BEGIN]") == 1 and three.prompt.endswith(zero.prompt)
    assert zero.reference == three.reference
    assert mbpp.problems("train", limit=1, shots=1)[0].prompt.count("[BEGIN]") == 2
    with pytest.raises(UserError, match="shots must be between 0 and 3"):
        mbpp.problems("train", shots=4)


@pytest.mark.parametrize(
    "completion, code",
    [
        ("def f(x):\n    return x\n[DONE]\nYou are an expert", "def f(x):\n    return x"),
        ("def f(x):\n    return x\n", "def f(x):\n    return x"),
        ("\n\ndef f(x):\r\n    return x\r\n[DONE]", "def f(x):\n    return x"),
        ("```python\ndef f(x):\n    return x\n```\nThis works because", "def f(x):\n    return x"),
        ("Here:\n```\ndef f(x):\n    return x", "def f(x):\n    return x"),  # unclosed fence
        ("[BEGIN]\ndef f(x):\n    return x\n[DONE]", "def f(x):\n    return x"),
        ("    def f(x):\n        return x\n", "def f(x):\n    return x"),  # indented as a whole
        ("def f(x):\n    return x\nYou are an expert Python programmer, and", "def f(x):\n    return x"),
        ("[DONE]", ""),
    ],
)
def test_extract_code(completion, code):
    assert mbpp.extract_code(completion) == code


def test_program_layout():
    problem = Problem(
        "mbpp/0",
        "",
        "def f(x):\n    return x",
        {"setup": "import math", "tests": ["assert f(1) == 1", "assert math.isclose(f(2), 2.0)"]},
    )
    program = mbpp.build_program(problem, "def f(x):\n    return x\n[DONE]")
    assert program.code == "def f(x):\n    return x\n\nimport math\n"
    assert program.checks == (
        Check(("f(1)",), "_probe0 == 1", "assert f(1) == 1"),
        Check(("f(2)",), "math.isclose(_probe0, 2.0)", "assert math.isclose(f(2), 2.0)"),
    )
    assert mbpp.TASK.program_for is mbpp.build_program
    # a test naming something only the program defines, outside a call: the asserts run inside it
    problem.data["tests"].append("assert f(3) == LIMIT")
    program = mbpp.build_program(problem, "def f(x):\n    return x\nLIMIT = 3\n")
    assert program.checks == ()
    assert program.code.endswith(
        "import math\n\nassert f(1) == 1\nassert math.isclose(f(2), 2.0)\nassert f(3) == LIMIT\n"
    )


def test_reference_solutions_pass_and_a_wrong_one_fails():
    by_id = {p.id: p for split in ("test", "test_full", "train") for p in mbpp.problems(split)}
    # 11, 12: sanitized test; 82: sanitized with test imports (math); 367: full file with setup code
    # (builds Node objects); 927: train, setup code; 601, 974: train from mbpp.jsonl (CRLF, tabs);
    # 737: returns a re.Match, which its tests take as true
    chosen = [by_id[f"mbpp/{task_id}"] for task_id in (11, 12, 82, 367, 927, 601, 974, 737)]
    results = run_many([mbpp.build_program(problem, problem.reference + "\n[DONE]") for problem in chosen])
    for problem, result in zip(chosen, results):
        assert result.passed, (problem.id, result.stderr)
    wrong = run_python(mbpp.build_program(by_id["mbpp/11"], "def remove_Occ(s, ch):\n    return s\n"))
    assert wrong.status == "failed"
    assert wrong.stderr.endswith(
        "AssertionError: assert remove_Occ('hello', 'l') == 'heo' (the program returned 'hello')\n"
    )


def sanitized_row(task_id):
    return {"task_id": task_id, "prompt": "p", "code": "c", "test_imports": [], "test_list": ["assert True"]}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "sanitized-mbpp.json: file not found"),
        ("[1, 2", "sanitized-mbpp.json:1: invalid JSON"),
        ('{"task_id": 2}', "expected a JSON array of tasks, got dict"),
        ('[{"task_id": 2, "prompt": "p"}]', r"task #1: missing key\(s\) code, test_imports, test_list"),
        (json.dumps([sanitized_row(2), sanitized_row(11)]), "the few-shot tasks 3, 4 are missing"),
    ],
)
def test_bad_data_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "sanitized-mbpp.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        mbpp.problems("test", sanitized_path=path)


def test_bad_full_file(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text('{"task_id": 601, "text": "t"}\n')
    with pytest.raises(UserError, match=r"mbpp.jsonl:1: missing key\(s\) code, test_setup_code, test_list"):
        mbpp.problems("train", full_path=path)
