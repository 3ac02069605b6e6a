"""AdaLoRA refuses a budget schedule it cannot run before it loads the model (issue 24, item 7): the recipe
counts its steps from the data first, so a bad run ends in about a second, not after MiniLM has loaded,
and leaves nothing behind. In-process, through the CLI's `main`; the recipe's imports (torch, transformers:
a fresh `lmforge` process pays them whatever it does) are done before the clock starts."""

import time

import pytest
import transformers  # noqa: F401  (imported before timing: see the docstring)

import lmforge.methods.adalora.recipe  # noqa: F401
from lmforge.cli.main import main

SHORT_RUN = ["train.max_steps=20", "data.max_train_examples=64", "data.max_eval_examples=32"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adalora.tinit=15", "adalora.tfinal=10"], "adalora: tinit (15) + tfinal (10) must be below"),
        (["adalora.init_r=4", "adalora.target_r=8"], "adalora.target_r (8) must not exceed adalora.init_r (4)"),
        (["train.early_stopping_patience=2"], "train.early_stopping_patience: AdaLoRA's budget schedule"),
        # a model that cannot load: the schedule's refusal proves the model was never reached
        (["model.name=/no/such/model", "adalora.tinit=15", "adalora.tfinal=10"], "the budget never moves"),
    ],
)
def test_a_bad_schedule_is_refused_in_seconds_and_writes_nothing(tmp_path, monkeypatch, capsys, overrides, message):
    monkeypatch.chdir(tmp_path)  # a default run folder would appear under runs/ here
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    code = main(["run", "adalora/minilm_sst2", *SHORT_RUN, *overrides, "--run-dir", str(run_dir)])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lmforge: error: ") and message in err[-1], err
    assert [line for line in err if "error" in line] == err[-1:]
    assert elapsed < 3, f"the refusal took {elapsed:.1f} s"
    assert list(tmp_path.iterdir()) == []
