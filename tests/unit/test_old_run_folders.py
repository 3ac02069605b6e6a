"""Run folders written before the run-kernel change (commit b5401c9) still load in eval, predict, export and
explain with the current code.

The folders are tests/data/runs_before_the_kernel/ (its README says how they were made). Each test copies
them into tmp_path first, since eval and explain write beside the run. Where it can, a test checks that
the loaded model is the trained one: eval on the run's own 16 evaluation examples gives the accuracy and
loss the old code recorded in final.json, and SFT's held-out loss is reproduced the same way.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import main

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "runs_before_the_kernel"
CLASSIFIER_RUNS = ["finetune/minilm_sst2", "lora/minilm_sst2", "adalora/minilm_sst2"]
ADAPTER_RUNS = ["lora/minilm_sst2", "adalora/minilm_sst2"]
KBERT_RUN = "kbert/minilm_sst2"
SFT_RUN = "sft/gemma_gsm8k"
TEXT = "a gorgeous film"


@pytest.fixture
def runs(tmp_path) -> Path:
    """A copy of the old run folders: the commands write into a run folder, never into tests/data."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "runs"))


def recorded(run: Path) -> dict:
    return json.loads((run / "final.json").read_text())


def own_eval_file(run: Path, folder: Path) -> Path:
    """The run's evaluation examples (the first data.max_eval_examples of its eval split) as a jsonl file."""
    import yaml

    from lmforge.data.files import load_examples

    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    examples = load_examples(data["eval"], default_split="dev")
    count = data["max_eval_examples"]
    path = folder / "own_eval.jsonl"
    rows = zip(examples.texts[:count], examples.labels[:count], strict=True)
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    return path


@pytest.mark.parametrize("name", CLASSIFIER_RUNS)
def test_eval_gives_the_recorded_evaluation(name, runs, tmp_path, capsys):
    run = runs / name
    data = own_eval_file(run, tmp_path)
    assert main(["eval", str(run), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out
    written = json.loads((run / "eval" / "own_eval.json").read_text())
    before = recorded(run)
    assert written["n_examples"] == before["n_examples"] == 16
    assert written["labels"] == before["labels"]
    assert written["metrics"]["accuracy"] == pytest.approx(before["metrics"]["accuracy"], abs=1e-9)
    assert written["metrics"]["loss"] == pytest.approx(before["metrics"]["loss"], rel=1e-5)
    assert written["confusion"] == before["confusion"]


def test_eval_on_a_builtin_split(runs, capsys):
    """The whole SST-2 dev split by name (the adapter runs' loading is checked above, on their own examples)."""
    run = runs / "finetune/minilm_sst2"
    assert main(["eval", str(run), "--data", "sst2:dev"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "accuracy" in x)
    accuracy = float(line.split("accuracy ")[1].split(",")[0])
    assert 0.0 <= accuracy <= 1.0
    assert json.loads((run / "eval" / "sst2-dev.json").read_text())["n_examples"] == 872


@pytest.mark.parametrize("name", ADAPTER_RUNS)
def test_adapter_runs_load_every_saved_tensor(name, runs):
    """Four tiny steps move an adapter run's loss too little for the eval check alone to tell a loaded adapter
    from a missing one, so every tensor of final/adapter_model.safetensors is looked up in the loaded model."""
    from safetensors.torch import load_file

    from lmforge.registry import load_finished_run

    run = runs / name
    saved = load_file(run / "final" / "adapter_model.safetensors")
    _, _, model, _ = load_finished_run(run)
    loaded = model.state_dict()
    assert any("lora_A" in key for key in saved)
    for key, tensor in saved.items():
        key = key.removeprefix("base_model.model.")
        key = key if key in loaded else key.removesuffix(".weight")  # PEFT's AdaLoRA names lora_A without .weight
        assert key in loaded, f"{name}: {key} of the adapter file is not in the loaded model"
        assert torch.equal(loaded[key].cpu(), tensor), f"{name}: {key} differs from the adapter file"


@pytest.mark.parametrize("name", CLASSIFIER_RUNS)
def test_predict(name, runs, capsys):
    run = runs / name
    assert main(["predict", str(run), TEXT, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip())
    labels = recorded(run)["labels"]
    assert answer["text"] == TEXT
    assert answer["label"] in labels
    assert set(answer["probabilities"]) == set(labels)
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["probabilities"][answer["label"]] == max(answer["probabilities"].values())


def classifier_logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer([TEXT, "a dull, lifeless film"], return_tensors="pt", padding=True)).logits


@pytest.mark.parametrize("name", [*ADAPTER_RUNS, KBERT_RUN])
def test_export_merges_into_a_plain_model_with_the_same_outputs(name, runs, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.registry import load_finished_run

    run, out = runs / name, tmp_path / "merged"
    assert main(["export", str(run), "--merge", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    merged = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert not any("lora" in key for key in merged.state_dict())
    assert merged.config.num_labels == len(recorded(run)["labels"])
    _, _, model, tokenizer = load_finished_run(run)
    expected = classifier_logits(model.cpu(), tokenizer)
    assert torch.allclose(classifier_logits(merged, AutoTokenizer.from_pretrained(str(out))), expected, atol=1e-5)


@pytest.mark.parametrize("name", CLASSIFIER_RUNS)
def test_explain(name, runs, capsys):
    run = runs / name
    assert main(["explain", str(run), TEXT, "--method", "grad", "--json"]) == 0
    explanation = json.loads(capsys.readouterr().out.strip())
    assert explanation["words"] == ["a", "gorgeous", "film"]
    assert explanation["target"] in recorded(run)["labels"]
    assert all(math.isfinite(x) for x in explanation["word_scores"])
    assert any(x != 0 for x in explanation["word_scores"])
    assert len(list((run / "explanations").glob("grad-*.html"))) == 1


@pytest.mark.parametrize("command", [["eval", "--data", "sst2:dev"], ["predict", TEXT], ["explain", TEXT]])
def test_kbert_run_is_refused_by_the_plain_token_commands_as_before(command, runs, capsys):
    """K-BERT's classifier reads sentence trees; b5401c9 refused it here too, with this same line."""
    run = runs / KBERT_RUN
    assert main([command[0], str(run), *command[1:]]) == 2
    error = capsys.readouterr().err
    assert "a kbert run, whose classifier reads its own inputs" in error
    assert len(error.strip().splitlines()) == 1


def test_sft_run_loads_with_its_trained_adapter(runs):
    """The loader gives back the trained model: its held-out loss is the one the old code recorded."""
    from lmforge.data.pairs import encode_pairs, load_train_dev
    from lmforge.methods.sft.recipe import held_out_loss
    from lmforge.models.causal_lm import load_causal_lm
    from lmforge.registry import load_finished_run

    run = runs / SFT_RUN
    cfg, labels, model, tokenizer = load_finished_run(run)
    assert labels == []
    _, dev_pairs = load_train_dev(cfg.data, cfg.options)
    _, dev_data = encode_pairs(tokenizer, dev_pairs, cfg.model.max_length)
    assert len(dev_data) == recorded(run)["n_examples"] == 8
    loss = held_out_loss(model.cpu(), dev_data, tokenizer.pad_token_id, cfg.train.eval_batch_size, "cpu")["loss"]
    assert loss == pytest.approx(recorded(run)["metrics"]["loss"], rel=1e-5)

    base, _ = load_causal_lm("tiny-gpt2", seed=cfg.train.seed)  # the adapter changes the model
    ids = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**ids).logits, base(**ids).logits, atol=1e-6)


def test_sft_run_explain_and_export(runs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from lmforge.models.causal_lm import load_causal_lm

    run, out = runs / SFT_RUN, tmp_path / "merged"
    args = ["explain", str(run), "Question: 2 + 2?\nAnswer:", "--answer", " 4", "--method", "grad", "--json"]
    assert main(args) == 0
    explanation = json.loads(capsys.readouterr().out.strip())
    assert explanation["answer"] == " 4"
    assert math.isfinite(explanation["log_prob"]) and explanation["log_prob"] < 0

    assert main(["export", str(run), "--merge", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    model, tokenizer = load_causal_lm(str(run), seed=42)
    ids = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, model(**ids).logits, atol=1e-5)
