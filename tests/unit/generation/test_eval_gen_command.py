"""`lmforge eval-gen` end to end on tiny-gpt2: the hf backend through a subprocess, the openai backend
against an `lmforge serve` server on 127.0.0.1 giving the same samples, and bad input."""

import json
import time
from pathlib import Path

import pytest
from tiny_server import tiny_generator, tiny_server  # noqa: F401 (fixtures)

from lmforge.cli.eval_gen import default_out
from lmforge.cli.main import main

ARGS = ["--task", "gsm8k", "--shots", "0", "--limit", "2", "--max-new-tokens", "24"]


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """One `lmforge eval-gen tiny-gpt2` subprocess (greedy, 2 GSM8K problems): its result and its folder."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("eval-gen") / "hf"
    result = run_cli("eval-gen", "tiny-gpt2", *ARGS, "--out", str(out))
    return result, out


def read_samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow  # needs hf_run: `lmforge eval-gen` in a fresh process (seconds)
def test_cli_writes_samples_metrics_and_a_summary(hf_run):
    result, out = hf_run
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "samples.jsonl"]  # no temporary files left
    samples = read_samples(out)
    assert [(s["problem_id"], s["index"]) for s in samples] == [("gsm8k/25", 0), ("gsm8k/70", 0)]
    assert all(not s["passed"] and s["status"] in ("wrong", "no_answer") and s["tokens"] <= 24 for s in samples)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [metrics[key] for key in ("model", "backend", "task", "split")] == ["tiny-gpt2", "hf", "gsm8k", "dev"]
    assert metrics["metrics"]["pass@k"] == {"1": 0.0} and metrics["metrics"]["samples"] == 2
    assert "majority_vote_accuracy" not in metrics["metrics"]  # one sample per problem: nothing to vote on
    params = metrics["parameters"]
    assert [params[key] for key in ("n", "k", "temperature", "max_new_tokens", "shots")] == [1, [1], 0.0, 24, 0]
    assert metrics["timing"]["generated_tokens"] == sum(s["tokens"] for s in samples)
    assert metrics["manifest"]["packages"]["torch"] and metrics["manifest"]["data"]["problems"] == 2
    assert "pass@1" in result.stdout and "written:" in result.stdout
    assert "generate" in result.stderr  # the progress bar


@pytest.mark.slow  # needs hf_run: `lmforge eval-gen` in a fresh process (seconds)
def test_openai_backend_gives_the_samples_of_the_hf_backend(hf_run, tiny_server, tmp_path, capsys):
    _, hf_out = hf_run
    out = tmp_path / "openai"
    url = tiny_server.url
    code = main(["eval-gen", "tiny-gpt2", *ARGS, "--backend", "openai", "--base-url", url, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    fields = ("problem_id", "index", "completion", "finish_reason", "tokens", "passed", "status", "answer")
    hf = [{f: s[f] for f in fields} for s in read_samples(hf_out)]
    served = [{f: s[f] for f in fields} for s in read_samples(out)]
    assert served == hf
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "openai" and metrics["parameters"]["base_url"] == tiny_server.url


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tiny-gpt2", "--task", "gsm9k"], "unknown task 'gsm9k' (tasks: gsm8k, mbpp, humaneval)"),
        (["tiny-gpt2", "--task", "mbpp", "--n", "2", "--k", "1,4"], "pass@4 needs at least 4 samples per problem"),
        (["no-such-model", "--task", "gsm8k", "--limit", "1"], "model 'no-such-model': not a builtin model"),
        (["tiny-gpt2", "--task", "humaneval", "--shots", "1"], "--shots applies to gsm8k and mbpp"),
        (["tiny-gpt2", "--task", "gsm8k", "--split", "test"], "task 'gsm8k' has no split 'test'"),
        (["tiny-gpt2", "--task", "gsm8k", "--backend", "vllm"], "--backend 'vllm': expected one of hf, openai"),
        (["tiny-gpt2", "--task", "gsm8k", "--base-url", "http://x"], "--base-url is for --backend openai"),
        (["tiny-gpt2", "--task", "gsm8k", "--n", "2", "--top-p", "0"], "argument --top-p: expected a value > 0.0"),
        (["tiny-gpt2", "--task", "gsm8k", "--temperature", "nan"], "argument --temperature: expected a finite number"),
        (["tiny-gpt2", "--task", "gsm8k", "--temperature", "inf"], "argument --temperature: expected a finite number"),
        (["tiny-gpt2", "--task", "mbpp", "--timeout", "nan"], "argument --timeout: expected a finite number"),
        (["tiny-gpt2", "--task", "gsm8k", "--seed", str(2**32)], "argument --seed: expected a value <= 4294967295"),
        (["tiny-gpt2", "--task", "gsm8k", "--limit", "-3"], "argument --limit: expected a value >= 1"),
        (["tiny-gpt2", "--task", "gsm8k", "--batch-size", "0"], "argument --batch-size: expected a value >= 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval-gen", *argv, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lmforge: error")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("out", ["file", "file/below"])
def test_an_out_that_is_or_lies_under_a_file_is_refused_before_any_work(tmp_path, capsys, out):
    (tmp_path / "file").write_text("mine")
    started = time.perf_counter()
    assert main(["eval-gen", "tiny-gpt2", *ARGS, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"lmforge: error: --out {tmp_path / out}: "
        + ("" if out == "file" else f"{tmp_path / 'file'} is ")
        + "a file, not a folder"
    ], err
    assert time.perf_counter() - started < 5  # refused before the model loads or any sample is generated
    assert (tmp_path / "file").read_text() == "mine"


def test_an_existing_result_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("{}")
    assert main(["eval-gen", "tiny-gpt2", *ARGS, "--out", str(tmp_path)]) == 2
    assert "already holds metrics.json" in capsys.readouterr().err
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_default_out_is_inside_a_run_folder_else_under_runs(tmp_path):
    stamp = time.strftime("%Y%m%d")
    run = tmp_path / "finetune-gemma"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("method: finetune\n")
    assert default_out(str(run), "hf", "mbpp", "test").parent == run / "eval-gen"
    assert default_out(str(run), "hf", "mbpp", "test").name.startswith(f"mbpp-test-{stamp}")
    assert default_out(str(run / "final"), "hf", "gsm8k", "dev").name.startswith(f"finetune-gemma-gsm8k-dev-{stamp}")
    served = default_out("org/model", "openai", "humaneval", "test")
    assert served.parent == Path("runs/eval-gen") and served.name.startswith("org-model-humaneval-test-")
