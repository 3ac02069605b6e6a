"""MBPP: Mostly Basic Python Problems (Austin et al. 2021, "Program Synthesis with Large Language
Models"), scored by running the problem's asserts on the model's code.

Data, bundled under `datasets/mbpp/` (see its SOURCE.md): `sanitized-mbpp.json` (427 hand-verified
tasks, clearer descriptions and corrected tests) and `mbpp.jsonl` (all 974 tasks). Splits by task id,
as the MBPP README and the Hugging Face loader define them:

| split      | task ids | file                                                          | problems |
|------------|----------|---------------------------------------------------------------|----------|
| prompt     | 1-10     | sanitized (the ids it has: 2, 3, 4, 6, 7, 8, 9)               | 7        |
| test       | 11-510   | sanitized only: the standard evaluation set                   | 257      |
| test_full  | 11-510   | mbpp.jsonl: the paper's original 500                          | 500      |
| validation | 511-600  | sanitized where it has the task (43), else mbpp.jsonl (47)     | 90       |
| train      | 601-974  | sanitized where it has the task (120), else mbpp.jsonl (254)   | 374      |

Prompt: the paper's 3-shot format (section 2.1, tasks 2, 3 and 4 as the shots, taken from the
sanitized file; `shots` takes fewer, 0 leaves the problem alone, as supervised fine-tuning trains it):
"You are an expert Python programmer, and here is your task: {text} Your code should pass these
tests:\n\n{tests}\n[BEGIN]\n{code}\n[DONE]\n" per shot, and the problem itself ending at "[BEGIN]\n".
Only `test_list` is run (the `challenge_test_list` of the full file is not), as in the paper.
The `prompt` split is there for completeness: its tasks 2, 3 and 4 are the shots themselves.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from functools import lru_cache
from pathlib import Path

from lmforge.errors import UserError
from lmforge.generation.sandbox_checks import Program, checks_from_asserts
from lmforge.tasks.base import DATA_DIR, Problem, Task, check_keys, check_split, read_jsonl, take, truncate

SANITIZED = DATA_DIR / "mbpp" / "sanitized-mbpp.json"
FULL = DATA_DIR / "mbpp" / "mbpp.jsonl"
SPLITS = ("test", "test_full", "validation", "train", "prompt")
IDS = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "test_full": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}
SHOT_IDS = (2, 3, 4)
SHOTS = 3
# The shots end every answer with [DONE]; a model that never writes it is cut when it starts the
# next few-shot block.
STOP = ("[DONE]", "\nYou are an expert Python programmer")

_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _lf(text: str) -> str:
    # mbpp.jsonl keeps Windows line endings inside its strings
    return text.replace("\r\n", "\n").replace("\r", "\n")


@lru_cache(maxsize=4)
def _sanitized(path: Path) -> dict[int, dict]:
    if not path.is_file():
        raise UserError(f"{path}: file not found (is the lmforge installation complete?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of tasks, got {type(data).__name__}")
    tasks = {}
    for i, row in enumerate(data):
        check_keys(path, f"task #{i + 1}", row, ("task_id", "prompt", "code", "test_imports", "test_list"))
        tasks[int(row["task_id"])] = {
            "task_id": int(row["task_id"]),
            "text": row["prompt"].strip(),
            "code": _lf(row["code"]).rstrip(),
            "setup": "\n".join(row["test_imports"]),
            "tests": [_lf(t) for t in row["test_list"]],
            "file": path.name,
        }
    return tasks


@lru_cache(maxsize=4)
def _full(path: Path) -> dict[int, dict]:
    tasks = {}
    for _, row in read_jsonl(path, ("task_id", "text", "code", "test_setup_code", "test_list")):
        tasks[int(row["task_id"])] = {
            "task_id": int(row["task_id"]),
            "text": row["text"].strip(),
            "code": _lf(row["code"]).rstrip(),
            "setup": _lf(row["test_setup_code"]).strip(),
            "tests": [_lf(t) for t in row["test_list"]],
            "file": path.name,
        }
    return tasks


def _block(task: dict, code: str | None) -> str:
    tests = "\n".join(task["tests"])
    block = (
        f"You are an expert Python programmer, and here is your task: {task['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )
    return block + (f"{code}\n[DONE]\n" if code is not None else "")


def problems(
    split: str = "test",
    limit: int | None = None,
    sanitized_path: Path = SANITIZED,
    full_path: Path = FULL,
    shots: int = SHOTS,
) -> list[Problem]:
    """Problems of a split in task-id order, each prompt with `shots` (0-3) worked tasks (2, 3, 4) first."""
    check_split("mbpp", split, SPLITS)
    if not 0 <= shots <= len(SHOT_IDS):
        raise UserError(f"mbpp: shots must be between 0 and {len(SHOT_IDS)}, got {shots}")
    sanitized = _sanitized(sanitized_path)
    full = _full(full_path) if split not in ("test", "prompt") else {}
    missing = [i for i in SHOT_IDS if i not in sanitized]
    if missing:
        raise UserError(f"{sanitized_path}: the few-shot tasks {', '.join(map(str, missing))} are missing")
    header = "".join(_block(sanitized[i], sanitized[i]["code"]) for i in SHOT_IDS[:shots])
    if split in ("test", "prompt"):
        tasks = [sanitized[i] for i in IDS[split] if i in sanitized]
    elif split == "test_full":
        tasks = [full[i] for i in IDS[split] if i in full]
    else:
        tasks = [sanitized.get(i) or full[i] for i in IDS[split] if i in sanitized or i in full]
    from_sanitized = sum(task["file"] == sanitized_path.name for task in tasks)
    chosen = [
        Problem(
            id=f"mbpp/{task['task_id']}", prompt=header + _block(task, None), reference=task["code"], data=dict(task)
        )
        for task in tasks
    ]
    from_full = len(tasks) - from_sanitized
    note = f"{shots}-shot, {from_sanitized} from {sanitized_path.name}, {from_full} from {full_path.name}"
    return take("mbpp", split, chosen, limit, note)


def extract_code(completion: str) -> str:
    """The code of a completion: after a [BEGIN] if the model repeated one, before [DONE], and
    inside the first ``` fence when there is one (an unclosed fence runs to the end)."""
    text = _lf(completion)
    if "[BEGIN]" in text:
        text = text.split("[BEGIN]", 1)[1]
    text = truncate(text, STOP)
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1)
    return textwrap.dedent(text).strip("\n")


def build_program(problem: Problem, completion: str) -> Program:
    """What the sandbox runs: the extracted code and the test imports / setup, then each assert as a
    check (the call runs in the sandbox, the comparison with the expected value in the parent:
    `generation/sandbox_checks.py`).

    The setup comes after the code because the full file's setup builds objects of classes the
    solution defines (task 367's `Node`); imports work from anywhere, as functions look names up
    when called. Tests the checks cannot express run inside the program instead (none in the
    bundled files).
    """
    code = "\n\n".join(part for part in (extract_code(completion), problem.data["setup"]) if part) + "\n"
    tests = "\n".join(problem.data["tests"])
    checks = checks_from_asserts(tests, _defined_names(problem.reference))
    if checks is None:
        return Program(f"{code}\n{tests}\n")
    return Program(code, checks)


def _defined_names(code: str) -> set[str]:
    """Top-level functions and classes of the reference solution: the names the tests call."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


TASK = Task(
    name="mbpp",
    description="MBPP Python problems (Austin et al. 2021), 3-shot, pass when every assert holds",
    splits=SPLITS,
    eval_split="test",
    train_split="train",
    stop=STOP,
    problems=problems,
    program_for=build_program,
    answer_end="\n[DONE]",
)
