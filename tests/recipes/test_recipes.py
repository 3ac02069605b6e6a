"""Every shipped recipe loads, validates, and runs end to end on tiny-bert through the CLI."""

import json
from pathlib import Path

import pytest
import yaml

from lmforge.cli.main import list_recipes, load_run_config
from lmforge.registry import METHODS

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(list_recipes().items())
FAST = [
    "model.name=tiny-bert",
    "train.max_steps=6",
    "train.batch_size=8",
    "train.eval_every=3",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
]
FAST_METHOD = {"adalora": ["adalora.tinit=1", "adalora.tfinal=2", "adalora.deltaT=1"]}  # a 6-step budget schedule


def test_recipes_exist_for_every_method_and_task():
    names = {name for name, _ in RECIPES}
    for method in ("finetune", "lora"):
        for task in ("sst2", "trec6", "agnews"):
            assert f"{method}/minilm_{task}" in names
    assert {"adalora/minilm_sst2", "adalora/minilm_trec6"} <= names
    assert {"sft/gemma_gsm8k", "sft/gemma_mbpp"} <= names


@pytest.mark.parametrize("name, path", RECIPES, ids=[n for n, _ in RECIPES])
def test_recipe_loads_and_validates(name, path):
    cfg = load_run_config(path, [])
    assert cfg.method in METHODS and cfg.method == name.split("/")[0]
    first_line = path.read_text().splitlines()[0]
    assert first_line == f"# lmforge run {name}", "the first line is the command that runs the recipe"
    assert yaml.safe_load(cfg.to_yaml())["method"] == cfg.method


CHAINED = {"tinybert"}  # recipes that need other finished runs: tests/recipes/test_tinybert_run.py chains them
# causal-LM recipes: test_sft_run.py, test_vstar_run.py and test_continual_run.py run them on tiny-gpt2
CAUSAL = {"sft", "vstar", "continual_lm"}
# K-BERT recipes: test_kbert_run.py runs them on tiny-bert (TREC-50's 50 labels need more than 64 examples);
# CReST and continual runs are parents of child runs: test_crest_run.py and test_continual_run.py run them
OWN_RUN_TESTS = {"kbert", "crest", "continual"}
RUNNABLE = [(n, p) for n, p in RECIPES if n.split("/")[0] not in CHAINED | CAUSAL | OWN_RUN_TESTS]


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
@pytest.mark.parametrize("name, path", RUNNABLE, ids=[n for n, _ in RUNNABLE])
def test_recipe_runs_on_tiny_bert(cli, tmp_path, name, path):
    run_dir = tmp_path / "run"
    method = name.split("/")[0]
    result = cli("run", name, *FAST, *FAST_METHOD.get(method, []), "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy" in result.stdout and str(run_dir / "report.html") in result.stdout
    for part in ("config.yaml", "manifest.json", "metrics.jsonl", "final.json", "report.html", "final"):
        assert (run_dir / part).exists(), part
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["n_examples"] == 32 and sum(map(sum, final["confusion"])) == 32
    if method in ("lora", "adalora"):
        assert (run_dir / "final" / "adapter_config.json").exists()
    else:
        assert (run_dir / "final" / "config.json").exists()
