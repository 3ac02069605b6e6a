from pathlib import Path

import lmforge
from lmforge.cli.main import build_parser, list_recipes
from lmforge.registry import METHODS, resolve

METHODS_DIR = Path(lmforge.__file__).parent / "methods"


def test_registry_matches_the_methods_folder():
    folders = {p.parent.name for p in METHODS_DIR.glob("*/recipe.py")}
    assert folders == set(METHODS)


def test_every_method_has_an_importable_recipe_loader_and_a_shipped_recipe():
    recipes = {name.split("/")[0] for name in list_recipes()}
    for method in METHODS.values():
        assert callable(resolve(method.recipe)) and callable(resolve(method.loader))
        assert method.name in recipes
        assert method.options.__name__.lower() == f"{method.name.replace('_', '')}config"  # continual_lm: ContinualLm


def test_cli_runs_every_registered_method_through_one_command():
    # `lmforge run` dispatches by the recipe's `method`, so each method needs no command of its own
    parser = build_parser()
    args = parser.parse_args(["run", "lora/minilm_sst2", "lora.r=4"])
    assert args.overrides == ["lora.r=4"]


def test_a_run_without_a_classifier_head_is_refused_by_the_commands_that_need_one(tmp_path, capsys):
    """TinyBERT's general distillation leaves an encoder with no head and no labels: predict, eval and explain
    would add a random head; probing, which reads hidden states only, takes it."""
    import json

    import pytest
    from transformers import AutoModel

    from lmforge.cli.main import find_recipe, main
    from lmforge.errors import UserError
    from lmforge.models.classifier import load_classifier
    from lmforge.registry import load_finished_run, load_run_config

    run = tmp_path / "general"
    run.mkdir()
    (run / "config.yaml").write_text(load_run_config(find_recipe("tinybert/general_minilm"), []).to_yaml())
    (run / "final.json").write_text(json.dumps({"metrics": {"held_out_loss": 1.0}, "labels": []}))
    model, tok = load_classifier("tiny-bert", ["a", "b"])
    AutoModel.from_config(model.config).save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    for command in ("predict", "eval", "explain"):
        with pytest.raises(UserError, match=f"a tinybert run with no labels.*lmforge {command} needs a classifier run"):
            load_finished_run(run, classifier_command=command)
    capsys.readouterr()
    assert main(["predict", str(run), "a fine film"]) == 2
    assert capsys.readouterr().err.startswith(f"lmforge: error: {run}: a tinybert run with no labels")
    load_finished_run(run, classifier_command="probe")


def test_the_registry_loads_without_torch():
    """`lmforge list` reads the registry: it must not pay torch's import (about a second) for that."""
    import subprocess
    import sys

    code = "import sys, lmforge.registry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
