"""TinyBERT refuses a phase or step setting it cannot run before it loads the teacher (issue 24, item 7):
the task recipe counts its steps from the data first, so a bad run ends in about a second and leaves
nothing behind. The teacher named here does not exist: a refusal about the phases proves it was never
reached. In-process, through the CLI's `main`, the recipe's imports done before the clock starts."""

import time

import pytest
import transformers  # noqa: F401  (imported before timing: see the docstring)

import lmforge.methods.tinybert.general  # noqa: F401
import lmforge.methods.tinybert.recipe  # noqa: F401
from lmforge.cli.main import main

NO_TEACHER = "tinybert.teacher=/no/such/teacher-run"
TASK = [
    "tinybert/minilm_sst2",
    NO_TEACHER,
    "tinybert.init_from=",
    "data.max_train_examples=48",
    "data.max_eval_examples=32",
]


@pytest.mark.parametrize(
    "args, message",
    [
        # 0.8 of 2 steps rounds to 2: the prediction layer would never train
        ([*TASK, "train.max_steps=2"], "0.8 of 2 steps leaves the prediction-layer phase no step"),
        ([*TASK, "train.max_steps=4", "tinybert.intermediate_share=0.1"], "leaves the intermediate-layer phase"),
        # no augmentation: the step count comes from the data (48 examples, batch 32, 1 epoch: 2 steps)
        ([*TASK, "tinybert.augment=false", "train.epochs=1", "train.batch_size=32"], "0.8 of 2 steps leaves"),
        ([*TASK, "train.max_steps=10", "tinybert.init_from=/no/such/general-run"], "has no final/"),
        (
            ["tinybert/general_minilm", NO_TEACHER, "train.early_stopping_patience=2"],
            "train.early_stopping_patience: not available in the general stage",
        ),
    ],
)
def test_a_bad_phase_or_step_setting_is_refused_in_seconds_and_writes_nothing(
    tmp_path, monkeypatch, capsys, args, message
):
    monkeypatch.chdir(tmp_path)  # a default run folder would appear under runs/ here
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    code = main(["run", *args, "--run-dir", str(run_dir)])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lmforge: error: ") and message in err[-1], err
    assert [line for line in err if "error" in line] == err[-1:]
    assert elapsed < 3, f"the refusal took {elapsed:.1f} s"
    assert list(tmp_path.iterdir()) == []


def test_a_setting_that_gives_each_phase_a_step_passes_the_check():
    from lmforge.methods.tinybert.recipe import phase_steps

    assert phase_steps(10, 0.8) == [8, 2] and phase_steps(4, 0.8) == [3, 1]
    assert phase_steps(1, 0.0) == [0, 1] and phase_steps(1, 1.0) == [1, 0]  # a share of 0 or 1 skips a phase
