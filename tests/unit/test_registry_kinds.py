"""The registry's contract (issue 24, item 6): one kind per method, loaders that take (run_dir, cfg) and read
a classifier's labels from the run folder, and recipes that return a RunResult the CLI prints."""

import inspect
from pathlib import Path

import pytest

from lmforge.core.result import RunResult
from lmforge.registry import KINDS, METHODS, Method, resolve


def test_every_method_has_one_known_kind():
    assert {m.kind for m in METHODS.values()} <= set(KINDS)
    assert METHODS["kbert"].kind == "tree_classifier" and METHODS["sft"].kind == "causal_lm"
    with pytest.raises(ValueError, match="kind 'classifer' is not one of classifier"):
        Method("x", "classifer", "", "", object, "m:run", "m:load")


@pytest.mark.parametrize("name", list(METHODS))
def test_loaders_take_the_run_folder_and_config_only(name):
    assert list(inspect.signature(resolve(METHODS[name].loader)).parameters) == ["run_dir", "cfg"]
    assert inspect.signature(resolve(METHODS[name].recipe)).return_annotation in ("RunResult", RunResult)


def test_a_result_line_leads_with_its_headline():
    result = RunResult(Path("runs/x"), {"loss": 0.25, "accuracy": 0.875, "macro_f1": 0.5}, ("accuracy", 0.875))
    assert result.line() == "accuracy 0.8750 (loss 0.2500, macro_f1 0.5000)"
    assert RunResult(Path("r"), {"perplexity": 3.0}, ("perplexity", 3.0)).line() == "perplexity 3.0000"
    with pytest.raises(AttributeError):
        result.headline = ("loss", 0.25)  # frozen
