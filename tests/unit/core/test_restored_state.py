"""A checkpoint's state.json becomes the loop's TrainState only when it is one (issue 23 item 9)."""

from pathlib import Path

import pytest

from lmforge.core.loop import TrainState
from lmforge.core.training_run import restored_state
from lmforge.errors import UserError

PATH = Path("step-00000004/state.json")


def test_a_saved_state_comes_back_as_it_was():
    saved = TrainState(step=4, epoch=1, best_metric=0.75, best_step=2, running_loss=float("nan")).to_dict()
    assert restored_state(saved, PATH).to_dict() == pytest.approx(saved, nan_ok=True)
    assert restored_state({"step": 3}, PATH) == TrainState(step=3)  # keys of older versions may be missing


@pytest.mark.parametrize(
    "saved, message",
    [
        ([4], "not an lmforge training state"),
        ({"step": 4, "shell": "rm -rf /"}, "not an lmforge training state"),
        ({"step": -1}, "step: expected a whole number >= 0, got -1"),
        ({"step": True}, "step: expected a whole number >= 0, got True"),
        ({"epoch": 1.5}, "epoch: expected a whole number >= 0, got 1.5"),
        ({"best_metric": "high"}, "best_metric: expected a number, got 'high'"),
        ({"stopped_early": 0}, "stopped_early: expected true or false, got 0"),
        ({"best_step": "x" * 10_000}, "best_step: expected a whole number >= 0, got 'xxx"),
    ],
)
def test_a_state_that_is_not_a_training_state_is_refused_naming_the_file(saved, message):
    with pytest.raises(UserError, match=f"{PATH}: {message}") as refused:
        restored_state(saved, PATH)
    assert len(str(refused.value)) < 300
