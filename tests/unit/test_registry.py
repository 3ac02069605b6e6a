from pathlib import Path

import lmforge
from lmforge.cli import build_parser, list_recipes
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
        assert method.options.__name__.lower() == f"{method.name}config"


def test_cli_runs_every_registered_method_through_one_command():
    # `lmforge run` dispatches by the recipe's `method`, so each method needs no command of its own
    parser = build_parser()
    args = parser.parse_args(["run", "lora/minilm_sst2", "lora.r=4"])
    assert args.overrides == ["lora.r=4"]
