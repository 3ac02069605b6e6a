"""The explanation commands through the CLI on a finished tiny run: output, files, one-line errors."""

import json

import pytest

# Every test here runs the CLI in a fresh process (seconds each, more on a loaded machine):
# `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

TINY = ["model.name=tiny-bert", "train.max_steps=4", "train.batch_size=8", "data.max_train_examples=40"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import run_cli

    run_dir = tmp_path_factory.mktemp("runs") / "finetune"
    result = run_cli("run", "finetune/minilm_sst2", *TINY, "data.max_eval_examples=16", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_no_color_prints_the_heat_map_as_plain_words(cli, finished_run, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    result = cli("explain", str(finished_run), "a gorgeous , witty film", "--method", "occlusion")
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout and "gorgeous" in result.stdout and "occlusion: explaining" in result.stdout


def test_explain_prints_a_heat_map_and_writes_a_page(cli, finished_run, tmp_path):
    page = tmp_path / "page.html"
    result = cli("explain", str(finished_run), "a gorgeous , witty film", "--method", "occlusion", "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert "\x1b[48;2;" in result.stdout and "occlusion: explaining" in result.stdout
    html = page.read_text()
    assert "gorgeous" in html and "per word piece" in html

    result = cli("explain", str(finished_run), "dull", "--json", "--target", "negative")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["target"] == "negative" and row["words"] == ["dull"] and row["method"] == "ig"
    assert len(list((finished_run / "explanations").glob("ig-*.html"))) == 1


def test_explain_eval_always_has_a_random_row(cli, finished_run):
    result = cli("explain-eval", str(finished_run), "--data", "sst2:dev", "--limit", "3", "--methods", "grad")
    assert result.returncode == 0, result.stderr
    out = json.loads((finished_run / "explain-eval" / "sst2-dev-delete.json").read_text())
    assert sorted(r["method"] for r in out["rows"]) == ["grad", "random"]
    assert out["texts"] == 3
    assert "comprehensiveness" in result.stdout
    assert (finished_run / "explain-eval" / "sst2-dev-delete.html").is_file()


def test_explain_global_lists_words_per_label(cli, finished_run):
    result = cli("explain-global", str(finished_run), "--data", "sst2:dev", "--limit", "12", "--min-count", "2")
    assert result.returncode == 0, result.stderr
    out = json.loads((finished_run / "explain-global" / "sst2-dev-occlusion.json").read_text())
    assert set(out["labels"]) == {"negative", "positive"} and out["texts"] == 12


def test_probe_runs_on_a_builtin_model(cli, tmp_path):
    result = cli("probe", "tiny-bert", "--limit", "60", "--out", str(tmp_path / "probe"))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "probe" / "probe.json").read_text())["rows"]
    assert len(rows) == 3  # embeddings + 2 layers


@pytest.mark.parametrize(
    "args, message",
    [
        (["explain", "{run}", "x", "--target", "maybe"], "not one of the model's labels"),
        (["explain", "{run}"], "nothing to explain"),
        (["explain", "{tmp}", "x"], "not a run folder"),
        (["explain-eval", "{run}", "--data", "{tmp}/missing.tsv"], "file not found"),
        (["explain-eval", "{run}", "--data", "sst2:dev", "--limit", "0"], "--limit must be at least 1"),
        (["probe", "tiny-bert", "--property", "colour"], "unknown property"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, finished_run, tmp_path, args, message):
    result = cli(*[a.format(run=finished_run, tmp=tmp_path) for a in args])
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
