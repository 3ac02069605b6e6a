"""SFT end to end on tiny-gpt2: the shipped recipes through the CLI, exact resume, a finished run
reloaded scoring what it scored in memory, a user file, accumulation, and bad input."""

import json
import re
import shutil

import pytest
from conftest import run_cli

from lmforge.cli.main import main
from lmforge.data.pairs import encode_pairs, load_train_dev
from lmforge.methods.sft.recipe import held_out_loss
from lmforge.models.causal_lm import load_causal_lm
from lmforge.registry import load_run_config

TINY = [
    "model.name=tiny-gpt2",
    "model.max_length=512",
    "train.batch_size=4",
    "train.eval_batch_size=8",
    "train.log_every=1",
    "sft.dev_size=8",
]
GPT2_LORA = "sft.target_modules=c_attn,c_proj,c_fc"  # GPT-2's names for the block's linear (Conv1D) layers
TIMEOUT = 1200  # a few seconds on an idle machine, minutes on a busy one


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final(run_dir):
    return json.loads((run_dir / "final.json").read_text())


def reloaded_loss(run_dir):
    """The held-out loss of the run's final/ loaded from disk, on the run's own held-out pairs."""
    cfg = load_run_config(run_dir / "config.yaml", [])
    model, tokenizer = load_causal_lm(str(run_dir))
    _, dev = encode_pairs(tokenizer, load_train_dev(cfg.data, cfg.options)[1], cfg.model.max_length)
    return held_out_loss(model, dev, tokenizer.pad_token_id, 8, "cpu")["loss"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sft") / "gsm8k"
    result = run_cli(
        "run",
        "sft/gemma_gsm8k",
        *TINY,
        GPT2_LORA,
        "train.max_steps=6",
        "train.eval_every=3",
        "train.save_every=2",
        "train.keep_checkpoints=10",
        "data.max_train_examples=40",
        "--run-dir",
        str(run_dir),
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir, result


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_gsm8k_recipe_trains_lora_and_writes_the_run_folder(lora_run):
    run_dir, result = lora_run
    assert "loss" in result.stdout and "perplexity" in result.stdout and str(run_dir / "report.html") in result.stdout
    for part in ("config.yaml", "manifest.json", "metrics.jsonl", "final.json", "report.html", "sft_data.json"):
        assert (run_dir / part).is_file(), part
    adapter = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["fan_in_fan_out"] and adapter["r"] == 8
    assert (run_dir / "final" / "tokenizer.json").is_file()
    assert [r["step"] for r in records(run_dir) if r["split"] == "eval"] == [3, 6]
    assert len([r for r in records(run_dir) if r["split"] == "train"]) == 6
    summary = final(run_dir)
    assert summary["n_examples"] == 8 and summary["labels"] == [] and summary["lora"] and summary["train_pairs"] == 40
    assert set(summary["metrics"]) == {"loss", "perplexity"}
    report = (run_dir / "report.html").read_text()
    assert "Training data" in report and "perplexity" in report
    assert "gsm8k train: 6,965 problems (0-shot" in result.stderr
    assert not (run_dir / "final" / "MODIFICATIONS.txt").exists()  # tiny-gpt2 is not Gemma: no notices


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_a_finished_lora_run_reloads_merged_and_scores_what_it_scored_in_memory(lora_run):
    run_dir, _ = lora_run
    assert reloaded_loss(run_dir) == pytest.approx(final(run_dir)["metrics"]["loss"], abs=1e-5)


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
@pytest.mark.parametrize(
    "command",
    [["eval", "--data", "sst2:dev"], ["predict", "a text"], ["explain-global", "--data", "sst2:dev"]],
)
def test_classifier_commands_refuse_a_causal_lm_run_in_one_line(lora_run, capsys, command):
    run_dir, _ = lora_run
    assert main([command[0], str(run_dir), *command[1:]]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"a causal-LM run (method sft), but lmforge {command[0]} takes classifier runs" in last, last
    assert f"lmforge eval-gen {run_dir} --task" in last


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_explain_attributes_a_lora_runs_answer_to_its_prompt(lora_run, tmp_path, capsys):
    run_dir, _ = lora_run
    page = tmp_path / "page.html"
    args = ["explain", str(run_dir), "Question: 2 plus 2?\nAnswer:", "--answer", " 4", "--method", "occlusion"]
    assert main([*args, "--html", str(page), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert result["answer"] == " 4" and page.is_file()


@pytest.mark.slow  # two whole runs in process, saving and reloading a model (about 10 s)
def test_a_run_from_a_gemma_derived_model_lists_its_modified_files(tmp_path):
    from lmforge.models.causal_lm import tiny_gpt2
    from lmforge.models.gguf import CONVERSION_NOTE

    base = tmp_path / "gemma-like"  # a folder carrying Gemma's notices, as the converted cache does
    model, tokenizer = tiny_gpt2()
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    (base / "LICENSE-NOTICE.txt").write_text("Gemma is provided under and subject to the Gemma Terms of Use\n")
    (base / "MODIFICATIONS.txt").write_text(CONVERSION_NOTE)
    short = [*TINY, GPT2_LORA, "train.max_steps=1", "data.max_train_examples=4", "sft.dev_size=2"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", "sft/gemma_gsm8k", *short, f"model.name={base}", "--run-dir", str(first)]) == 0
    assert main(["run", "sft/gemma_gsm8k", *short, f"model.name={first}", "--run-dir", str(second)]) == 0
    for run, fine_tunings in ((first, 1), (second, 2)):
        assert (run / "final" / "LICENSE-NOTICE.txt").is_file()
        lines = (run / "final" / "MODIFICATIONS.txt").read_text().splitlines()
        assert lines[:2] == CONVERSION_NOTE.splitlines() and len(lines) == 2 + fine_tunings
        assert all(
            line.startswith("- adapter_model.safetensors: fine-tuned by lmforge's sft method") for line in lines[2:]
        )
        assert "LoRA adapter, data gsm8k:train" in lines[-1]


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_resume_from_a_checkpoint_ends_exactly_like_the_uninterrupted_run(lora_run, tmp_path):
    run_dir, _ = lora_run
    stopped = tmp_path / "stopped"
    shutil.copytree(run_dir, stopped)
    # the run as it was when stopped after its step-2 checkpoint: everything later removed
    shutil.rmtree(stopped / "final")
    (stopped / "final.json").unlink()
    (stopped / "report.html").unlink()
    for step in (4, 6):
        shutil.rmtree(stopped / "checkpoints" / f"step-{step:08d}")
    result = run_cli("run", "sft/gemma_gsm8k", "--resume", "--run-dir", str(stopped), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step-00000002 (step 2)" in result.stderr
    assert final(stopped)["metrics"] == final(run_dir)["metrics"]
    assert records(stopped) == records(run_dir)
    assert (stopped / "report.html").is_file()


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_mbpp_recipe_trains_every_weight_and_the_run_reloads(tmp_path):
    run_dir = tmp_path / "mbpp"
    result = run_cli(
        "run", "sft/gemma_mbpp", *TINY, "sft.lora=false", "train.max_steps=2", "data.max_train_examples=8",
        "--run-dir", str(run_dir), timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "final" / "config.json").is_file() and (run_dir / "final" / "tokenizer.json").is_file()
    summary = final(run_dir)
    assert summary["trainable_parameters"] == summary["total_parameters"] and not summary["lora"]
    assert reloaded_loss(run_dir) == pytest.approx(summary["metrics"]["loss"], abs=1e-5)


def test_a_user_file_trains_and_accumulation_equals_a_bigger_batch(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q: {i} plus {i} ?\nA:", "completion": f" {2 * i}" + " ok" * (i % 5)} for i in range(24)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [*TINY, "sft.lora=false", "model.dropout=0", f"data.train={path}", "sft.dev_size=4", "train.max_steps=3"]
    losses = {}
    for batch, accum in ((4, 1), (1, 4)):
        run_dir = tmp_path / f"b{batch}a{accum}"
        args = ["run", "sft/gemma_gsm8k", *common, f"train.batch_size={batch}", f"train.grad_accum={accum}"]
        assert main([*args, "--run-dir", str(run_dir)]) == 0
        losses[batch] = [r["loss"] for r in records(run_dir) if r["split"] == "train"]
    manifest = json.loads((run_dir / "manifest.json").read_text())["data"]
    assert manifest["train"]["examples"] == 20 and manifest["eval"]["examples"] == 4
    assert final(run_dir)["eval_data"] == f"{path} (held out: 4)"
    # pairs of unequal lengths: the loss is a mean over the step's tokens, whatever the micro-batches
    assert len(losses[4]) == 3 and losses[4] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
    assert losses[4][0] != pytest.approx(losses[4][-1], rel=1e-4)  # training moved


@pytest.mark.parametrize(
    "content, overrides, message",
    [
        ('{"question": "2+2?", "answer": " 4"}\n', [], r"bad.jsonl:1: no column 'prompt' \(columns: question, "),
        ("", [], r"bad.jsonl: the file is empty"),
        ('{"prompt": "2+2?", "completion": " 4"}\n', ["train.early_stopping_patience=2"], "early_stopping_patience"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path, capsys, content, overrides, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    run_dir = tmp_path / "run"
    code = main(["run", "sft/gemma_gsm8k", *TINY, f"data.train={path}", *overrides, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lmforge: error: ") and re.search(message, last), last
    assert not run_dir.exists()
