"""GSM8K: grade-school math word problems with a numeric answer (Cobbe et al. 2021, "Training
Verifiers to Solve Math Word Problems").

Data: the 7,473-problem training file of openai/grade-school-math, bundled under
`datasets/gsm8k/` (see its SOURCE.md). The official test set is not bundled, so three disjoint
parts are carved from the training file, deterministically:
- few-shot exemplars: lines 1-8 of the file (a fixed first-n choice, as lm-evaluation-harness makes);
- `dev`: 500 of the other 7,465 lines, picked by `random.Random(2024).shuffle` (kept in file order);
- `train`: the remaining 6,965 lines, in file order.

Prompt: the "Question: ... / Answer: ..." format with worked solutions ending in `#### N`
(the format of the GSM8K files; Wei et al. 2022 showed such worked exemplars elicit chain-of-thought
reasoning), 8 exemplars by default. The calculator annotations `<<48/2=24>>` of the files are removed
from exemplars and references: they are a tool-use format the model is not given.

Scoring: the answer is the number after `####`, else after "The answer is", else the last number of
the completion; commas, currency signs, units, percent signs and trailing zeros are ignored
(`$1,000.00` == `1000`); numbers written as words are not read.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

from lmforge.errors import UserError
from lmforge.tasks.base import DATA_DIR, Problem, Task, check_split, read_jsonl, take, truncate

PATH = DATA_DIR / "gsm8k" / "train.jsonl"
SPLITS = ("train", "dev")
N_EXEMPLARS = 8  # lines 1-8 of the file
DEV_SIZE = 500
DEV_SEED = 2024
SHOTS = 8
# A new "Question:" means the answer is over; three newlines catch a model that rambles on.
# Solutions in the data never contain either.
STOP = ("Question:", "\n\n\n")

_ANNOTATION = re.compile(r"<<[^>]*>>")
# A number: digits with optional thousands commas and decimals, or a bare decimal (.5); a minus sign
# counts only when it does not follow a word character or a period ("8-5" is 8 and 5, "= -5" is -5).
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_CURRENCY = re.compile(r"[$€£¥]")
_ANSWER_IS = re.compile(r"the (?:final )?answer is", re.IGNORECASE)


# ---- answers ----------------------------------------------------------------------------------


def normalize_number(text: str) -> str | None:
    """A canonical string for a number: "1,000.50" -> "1000.5", "18.00" -> "18", "-0" -> "0"."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _numbers(text: str) -> list[str]:
    # Currency signs go first so that "-$5" and "$-5" both read as -5; U+2212 is a typeset minus.
    text = _CURRENCY.sub("", text.replace("\u2212", "-"))
    return [m.group(0) for m in _NUMBER.finditer(text)]


def extract_answer(completion: str) -> str | None:
    """The completion's final answer as a canonical number string, or None when it has no number.

    In order: the first number after the first `####`; else the first number after the first
    "The answer is"; else the last number in the completion. The completion is first cut at the
    stop sequences, as generation would have cut it.
    """
    text = truncate(completion, STOP)
    hashes = text.find("####")
    if hashes != -1:
        numbers = _numbers(text[hashes + 4 :])
        if numbers:
            return normalize_number(numbers[0])
    answer_is = _ANSWER_IS.search(text)
    if answer_is:
        numbers = _numbers(text[answer_is.end() :])
        if numbers:
            return normalize_number(numbers[0])
    numbers = _numbers(text)
    return normalize_number(numbers[-1]) if numbers else None


def is_correct(problem: Problem, completion: str) -> bool:
    answer = extract_answer(completion)
    return answer is not None and answer == problem.data["answer"]


# ---- data -------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _rows(path: Path) -> tuple[tuple[int, str, str, str], ...]:
    """(line, question, solution without annotations, canonical gold answer) for every line of the file."""
    rows = []
    for line_no, row in read_jsonl(path, ("question", "answer")):
        solution = str(row["answer"])
        if "####" not in solution:
            raise UserError(f"{path}:{line_no}: the answer has no '#### N' line with the final answer")
        gold = normalize_number(solution.rsplit("####", 1)[1].strip())
        if gold is None:
            raise UserError(f"{path}:{line_no}: the text after '####' is not a number")
        rows.append((line_no, str(row["question"]).strip(), _ANNOTATION.sub("", solution).strip(), gold))
    if len(rows) < N_EXEMPLARS + DEV_SIZE + 1:
        raise UserError(f"{path}: {len(rows)} problems; the carve needs more than {N_EXEMPLARS + DEV_SIZE}")
    return tuple(rows)


def carve(n: int) -> tuple[list[int], list[int], list[int]]:
    """Row indices of (exemplars, dev, train) for a file of n rows; see the module docstring."""
    exemplars = list(range(N_EXEMPLARS))
    rest = list(range(N_EXEMPLARS, n))
    random.Random(DEV_SEED).shuffle(rest)
    dev = sorted(rest[:DEV_SIZE])
    dev_set = set(dev)
    train = [i for i in range(N_EXEMPLARS, n) if i not in dev_set]
    return exemplars, dev, train


def _block(question: str, solution: str | None) -> str:
    return f"Question: {question}\nAnswer:" + (f" {solution}" if solution is not None else "")


def problems(split: str = "dev", limit: int | None = None, shots: int = SHOTS, path: Path = PATH) -> list[Problem]:
    """Problems of `train` or `dev` in file order, each prompt with `shots` (0-8) worked exemplars."""
    check_split("gsm8k", split, SPLITS)
    if not 0 <= shots <= N_EXEMPLARS:
        raise UserError(f"gsm8k: shots must be between 0 and {N_EXEMPLARS}, got {shots}")
    rows = _rows(path)
    exemplars, dev, train = carve(len(rows))
    header = "".join(_block(rows[i][1], rows[i][2]) + "\n\n" for i in exemplars[:shots])
    chosen = [
        Problem(
            id=f"gsm8k/{line}",
            prompt=header + _block(question, None),
            reference=f" {solution}",
            data={"question": question, "answer": gold, "line": line},
        )
        for line, question, solution, gold in (rows[i] for i in (dev if split == "dev" else train))
    ]
    return take("gsm8k", split, chosen, limit, f"{shots}-shot, carved from {path.name}")


TASK = Task(
    name="gsm8k",
    description="GSM8K grade-school math (Cobbe et al. 2021), answer after '####', exact numeric match",
    splits=SPLITS,
    eval_split="dev",
    train_split="train",
    stop=STOP,
    problems=problems,
    is_correct=is_correct,
    extract_answer=extract_answer,
)
