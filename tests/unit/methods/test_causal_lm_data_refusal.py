"""The causal-LM methods read (prompt, completion) pairs or a task's problems: the classifier-only data keys
`data.text_pair_column` and `data.subset` are refused in one line before any model loads, rather than ignored."""

import pytest

from lmforge.cli.main import main

NO_MODEL = "model.name=/no/such/model"  # a model that cannot load: a refusal with it proves it was never reached


@pytest.mark.parametrize(
    "recipe, overrides, message",
    [
        ("sft/gemma_gsm8k", ["data.text_pair_column=answer"], "not available for sft"),
        ("sft/gemma_gsm8k", ["data.subset=main"], "not available for sft"),
        ("continual_lm/gemma_gsm8k_mbpp", ["data.text_pair_column=answer"], "not available for continual_lm"),
        ("vstar/gemma_gsm8k", ["data.subset=main"], "not available for vstar"),
    ],
)
def test_classifier_data_keys_are_refused(tmp_path, capsys, recipe, overrides, message):
    run_dir = tmp_path / "run"
    assert main(["run", recipe, NO_MODEL, *overrides, "--run-dir", str(run_dir)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last, last
    assert not run_dir.exists()
