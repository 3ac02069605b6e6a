"""K-BERT refuses bad options before it loads the model (issue 24, item 7): a missing or malformed graph
file and a multiple-choice text without its choices end the run in about a second, not after MiniLM has
loaded, and leave nothing behind. In-process, through the CLI's `main`; the recipe's imports (torch,
transformers: a fresh `lmforge` process pays them whatever it does) are done before the clock starts."""

import time

import pytest
import transformers  # noqa: F401  (imported before timing: see the docstring)

import lmforge.methods.kbert.recipe  # noqa: F401
from lmforge.cli.main import main

SHORT_RUN = ["train.max_steps=6", "data.max_train_examples=64", "data.max_eval_examples=32"]
NO_MODEL = "model.name=/no/such/model"  # a model that cannot load: a refusal with it proves it was never reached


@pytest.fixture
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graphs")
    (folder / "two_columns.tsv").write_text("dog\tIsA\tanimal\ncat\tanimal\n")
    (folder / "empty.tsv").write_text("# only a comment\n")
    return folder


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["kbert.graph={graphs}/missing.tsv"], "missing.tsv': not a builtin graph"),
        (["kbert.graph={graphs}/two_columns.tsv"], "two_columns.tsv:2: expected 3 tab-separated columns"),
        (["kbert.graph={graphs}/empty.tsv"], "empty.tsv: no triples"),
        (["kbert.choices=true"], "sst2:train, example 1: kbert.choices expects"),
        ([NO_MODEL, "kbert.graph={graphs}/missing.tsv"], "not a builtin graph"),
        ([NO_MODEL, "kbert.choices=true"], "kbert.choices expects"),
    ],
)
def test_a_bad_graph_or_choice_text_is_refused_in_seconds_and_writes_nothing(
    tmp_path, monkeypatch, capsys, graphs, overrides, message
):
    monkeypatch.chdir(tmp_path)  # a default run folder would appear under runs/ here
    run_dir = tmp_path / "run"
    overrides = [item.format(graphs=graphs) for item in overrides]
    started = time.perf_counter()
    code = main(["run", "kbert/minilm_sst2", *SHORT_RUN, *overrides, "--run-dir", str(run_dir)])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lmforge: error: ") and message in err[-1], err
    assert [line for line in err if "error" in line] == err[-1:]
    assert elapsed < 3, f"the refusal took {elapsed:.1f} s"
    assert list(tmp_path.iterdir()) == []
