"""Recipe lookup (`lmforge list recipes`, `lmforge run NAME`) and `lmforge recipe cp NAME PATH`.

A recipe is a YAML file `<method>/<model>_<task>.yaml` whose first comment line is the command that
runs it. The recipes ship inside the package (src/lmforge/recipes/, package data in the wheel), so an
installed lmforge finds them from any folder. A name is looked up in this order:

1. a path the user gives (`lmforge run my/edited.yaml`: any name ending in .yaml or .yml);
2. `./recipes/<method>/<name>.yaml` in the current folder: the user's own edited copies, which take
   the place of the shipped recipe of the same name;
3. the shipped recipes.

`lmforge recipe cp NAME PATH` copies a recipe to edit, as torchtune's `tune cp` does.
"""

from __future__ import annotations

import argparse
import difflib
from importlib import resources
from pathlib import Path

from lmforge.errors import UserError

RECIPE_SUFFIXES = (".yaml", ".yml")
LOCAL_RECIPES = Path("recipes")  # relative: read in the folder the command runs in

RECIPE_HELP = """\
Recipes are YAML files named <method>/<model>_<task> (see `lmforge list recipes`). A name is looked up
in ./recipes/ in the current folder first (your own edited copies), then among the recipes shipped
with lmforge. `lmforge run` also takes a path to a .yaml file.
"""

CP_HELP = """\
Copy the recipe NAME (as `lmforge run NAME` would find it) to the file PATH, to edit it and run it with
`lmforge run PATH`. An existing file is never overwritten; missing parent folders are created.
If PATH is an existing folder the copy is PATH/<model>_<task>.yaml.

example:
  lmforge recipe cp lora/minilm_sst2 my_recipes/lora_sst2.yaml
  lmforge run my_recipes/lora_sst2.yaml train.epochs=1
"""


def shipped_recipes_dir() -> Path:
    """The recipes folder inside the installed package. Wheels install unpacked, so it is a real folder
    (a zipped install would need importlib.resources.as_file; lmforge is not installed that way)."""
    return Path(str(resources.files("lmforge") / "recipes"))


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up by name, first match wins: ./recipes/ (read when called, so a
    command finds the copies in the folder it runs in), then the shipped ones."""
    return [Path.cwd() / LOCAL_RECIPES, shipped_recipes_dir()]


def list_recipes() -> dict[str, Path]:
    """Recipe name (`lora/minilm_sst2`) -> its file, the user's ./recipes/ copy before the shipped one."""
    found: dict[str, Path] = {}
    for root in recipe_dirs():
        for path in sorted(root.glob("*/*.yaml")):
            found.setdefault(f"{path.parent.name}/{path.stem}", path)
    return found


def first_comment(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def is_local(path: Path) -> bool:
    """Whether a listed recipe is the user's copy in ./recipes/ rather than a shipped one."""
    return path.is_relative_to(Path.cwd() / LOCAL_RECIPES)


def find_recipe(name: str) -> Path:
    path = Path(name)
    if path.suffix in RECIPE_SUFFIXES:
        if not path.is_file():
            raise UserError(f"{path}: recipe file not found")
        return path
    recipes = list_recipes()
    if name not in recipes:
        raise UserError(unknown_recipe(name, recipes))
    return recipes[name]


def unknown_recipe(name: str, recipes: dict[str, Path]) -> str:
    """One line: the name, the recipes closest to it, and how to see them all."""
    close = difflib.get_close_matches(name, list(recipes), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown recipe {name!r} ({hint}`lmforge list recipes` lists them all)"


# ---- lmforge recipe cp ----------------------------------------------------------------------------


def add_recipe_parser(commands) -> None:
    p = commands.add_parser(
        "recipe",
        help="copy a recipe to edit (recipe cp NAME PATH)",
        description=RECIPE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")  # of the parent's parser class
    cp = actions.add_parser(
        "cp",
        help="copy the recipe NAME to the file PATH to edit it",
        description=CP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("name", metavar="NAME", help="a recipe name such as lora/minilm_sst2 (see `lmforge list recipes`)")
    cp.add_argument("path", metavar="PATH", type=Path, help="the .yaml file to write (or a folder to write it in)")
    cp.set_defaults(handler=cmd_recipe_cp)


def cmd_recipe_cp(args) -> int:
    recipes = list_recipes()
    name = args.name.removesuffix(".yaml").removesuffix(".yml")
    if name not in recipes:
        raise UserError(unknown_recipe(args.name, recipes))
    source = recipes[name]
    target = args.path / source.name if args.path.is_dir() else args.path
    if target.suffix not in RECIPE_SUFFIXES:
        raise UserError(f"{target}: a recipe file name ends in .yaml (`lmforge run` takes a .yaml path)")
    if target.exists():
        raise UserError(f"{target}: already exists; not overwritten (choose another PATH or remove it)")
    for parent in reversed(target.parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{parent}: is a file, so {target} cannot be written there")
    text = source.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and lines[0].startswith("# lmforge run "):  # the first line says how to run this file
        lines[0] = f"# lmforge run {target}  (copied from {name})\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("x", encoding="utf-8") as out:  # "x": never replace a file made meanwhile
            out.write("".join(lines))
    except FileExistsError:
        raise UserError(f"{target}: already exists; not overwritten (choose another PATH or remove it)") from None
    print(f"copied {name} to {target}")
    print(f"run it with: lmforge run {target}")
    return 0
