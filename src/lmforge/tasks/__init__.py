"""Evaluation tasks of the causal-LM side: GSM8K, MBPP, HumanEval.

    task = load_task("mbpp")
    for problem in task.problems(task.eval_split, limit=50):
        completion = ...  # generate from problem.prompt, stopping at task.stop
        program = task.program_for(problem, completion)  # code tasks: run it in core/sandbox
        # answer tasks: task.is_correct(problem, completion)

See `base.py` for the shapes and each module's docstring for its data, splits and prompt format.
"""

from __future__ import annotations

from lmforge.errors import UserError
from lmforge.tasks import gsm8k, humaneval, mbpp
from lmforge.tasks.base import Problem, Task, truncate

TASKS: dict[str, Task] = {"gsm8k": gsm8k.TASK, "mbpp": mbpp.TASK, "humaneval": humaneval.TASK}


def load_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (tasks: {', '.join(TASKS)})")
    return TASKS[name]


__all__ = ["TASKS", "Problem", "Task", "load_task", "truncate"]
