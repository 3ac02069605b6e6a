"""The shape every evaluation task shares: a `Problem` (prompt, reference, scoring data) and a `Task`.

A task is data plus two kinds of scoring:
- answer tasks (GSM8K) score a completion here: `task.is_correct(problem, completion)`;
- code tasks (MBPP, HumanEval) only build the program to run: `task.program_for(problem, completion)`
  returns the full Python text (solution + tests), and `lmforge.generation.sandbox` gives the verdict.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.core.console import say
from lmforge.errors import UserError
from lmforge.generation.sandbox_checks import Program

DATA_DIR = Path(__file__).resolve().parent.parent / "datasets"


@dataclass(frozen=True)
class Problem:
    """One problem of a task.

    `prompt` is the whole text the model continues (few-shot examples included); `reference` is a
    correct completion of that prompt (GSM8K: the worked solution ending in `#### N`; MBPP: the
    reference code; HumanEval: the canonical function body), so scoring `reference` always passes.
    `data` holds what scoring needs (GSM8K: the gold `answer`; code tasks: tests, setup, entry point).
    """

    id: str
    prompt: str
    reference: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    splits: tuple[str, ...]
    eval_split: str  # the split a benchmark number is reported on
    train_split: str | None  # problems a method may learn from (None: evaluation only)
    stop: tuple[str, ...]  # generation stops at the first of these; scoring also cuts there
    problems: Callable[..., list[Problem]]  # (split, limit=None) -> problems in a fixed order
    is_correct: Callable[[Problem, str], bool] | None = None  # answer tasks
    extract_answer: Callable[[str], str | None] | None = None  # answer tasks: normalised answer for voting
    program_for: Callable[[Problem, str], Program] | None = None  # code tasks: what the sandbox runs
    answer_end: str = ""  # what follows a reference in the task's exemplars; a trained completion ends so too

    @property
    def kind(self) -> str:
        return "code" if self.program_for is not None else "answer"


def truncate(completion: str, stop: Sequence[str]) -> str:
    """The completion up to the first stop sequence, as a generator with these stops would return it.

    Scoring applies it too, so that a backend which ignored the stops (or a hand-written string)
    is scored exactly like a generation that stopped.
    """
    end = len(completion)
    for s in stop:
        i = completion.find(s)
        if i != -1:
            end = min(end, i)
    return completion[:end]


def check_split(task: str, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
        raise UserError(f"task {task!r} has no split {split!r} (splits: {', '.join(splits)})")


def take(task: str, split: str, problems: list[Problem], limit: int | None, note: str = "") -> list[Problem]:
    """The first `limit` problems (all when None), with the count said on stderr."""
    if limit is not None and limit < 1:
        raise UserError(f"{task} {split}: limit must be a positive number of problems, got {limit}")
    chosen = problems if limit is None else problems[:limit]
    count = f"{len(chosen):,}" if len(chosen) == len(problems) else f"{len(chosen):,} of {len(problems):,}"
    say(f"{task} {split}: {count} problems{f' ({note})' if note else ''}")
    return chosen


def read_jsonl(
    path: Path, required: Sequence[str], missing: str = "is the lmforge installation complete?"
) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a .jsonl or .jsonl.gz file; a missing file
    (`missing` says what to do), an unreadable gzip file, bad JSON or a missing key is a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: file not found ({missing})")
    rows, zipped = [], path.suffix == ".gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") if zipped else path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
                check_keys(path, line_no, row, required)
                rows.append((line_no, row))
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable {'gzip ' if zipped else ''}file ({e})") from None
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def check_keys(path: Path, where: int | str, row: Any, required: Sequence[str]) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{path}:{where}: expected a JSON object, got {type(row).__name__}")
    missing = [key for key in required if key not in row]
    if missing:
        raise UserError(f"{path}:{where}: missing key(s) {', '.join(missing)} (expected {', '.join(required)})")
