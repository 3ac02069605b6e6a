import pytest

from lmforge.errors import UserError
from lmforge.tasks import TASKS, load_task, truncate


def test_registry_lists_the_three_tasks_with_their_scoring():
    assert list(TASKS) == ["gsm8k", "mbpp", "humaneval"]
    for name, task in TASKS.items():
        assert load_task(name) is task and task.name == name
        assert task.eval_split in task.splits and (task.train_split is None or task.train_split in task.splits)
        assert task.stop and all(task.stop)
    assert TASKS["gsm8k"].kind == "answer" and TASKS["gsm8k"].is_correct and TASKS["gsm8k"].extract_answer
    assert TASKS["mbpp"].kind == "code" and TASKS["humaneval"].kind == "code"
    assert TASKS["humaneval"].train_split is None


def test_unknown_task():
    with pytest.raises(UserError, match=r"unknown task 'gsm9k' \(tasks: gsm8k, mbpp, humaneval\)"):
        load_task("gsm9k")


def test_truncate_cuts_at_the_earliest_stop():
    assert truncate("a\nb\n#c\ndef d", ("\ndef ", "\n#")) == "a\nb"
    assert truncate("abc", ("x",)) == "abc" and truncate("", ("x",)) == ""
