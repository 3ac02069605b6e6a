"""Recipe lookup and `lmforge recipe cp NAME PATH` (cli/recipes.py), in-process through lmforge.cli.main."""

from pathlib import Path

import pytest

import lmforge
from lmforge.cli import main
from lmforge.cli.recipes import find_recipe, list_recipes, shipped_recipes_dir
from lmforge.registry import load_run_config


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in an empty folder of its own: no ./recipes/ there unless the test makes one."""
    monkeypatch.chdir(tmp_path)


def test_the_recipes_are_found_inside_the_package():
    shipped = shipped_recipes_dir()
    assert shipped == Path(lmforge.__file__).parent / "recipes"
    recipes = list_recipes()
    assert "lora/minilm_sst2" in recipes and len(recipes) >= 17
    assert all(path.is_relative_to(shipped) for path in recipes.values())
    for name, path in recipes.items():  # each file's first line is the command that runs it
        assert path.read_text(encoding="utf-8").splitlines()[0] == f"# lmforge run {name}"


def test_cp_copies_a_recipe_into_new_folders_and_says_how_to_run_it(capsys, tmp_path):
    code, out, err = run(capsys, "recipe", "cp", "lora/minilm_sst2", "mine/lora/sst2.yaml")
    target = Path("mine/lora/sst2.yaml")
    assert code == 0 and err == ""
    assert target.is_file()
    assert "mine/lora/sst2.yaml" in out and "lmforge run mine/lora/sst2.yaml" in out
    shipped = list_recipes()["lora/minilm_sst2"]
    # The same config; only the first line changes, to the command that runs the copy.
    assert load_run_config(target, []).to_yaml() == load_run_config(shipped, []).to_yaml()
    copy_lines, shipped_lines = target.read_text().splitlines(), shipped.read_text().splitlines()
    assert copy_lines[0] == "# lmforge run mine/lora/sst2.yaml  (copied from lora/minilm_sst2)"
    assert copy_lines[1:] == shipped_lines[1:]
    assert find_recipe("mine/lora/sst2.yaml") == target  # `lmforge run PATH` takes it


def test_cp_into_an_existing_folder_keeps_the_recipes_file_name(capsys, tmp_path):
    Path("edits").mkdir()
    code, out, _ = run(capsys, "recipe", "cp", "adalora/minilm_trec6", "edits")
    assert code == 0 and Path("edits/minilm_trec6.yaml").is_file()
    assert "lmforge run edits/minilm_trec6.yaml" in out


def test_cp_refuses_to_overwrite_a_file(capsys, tmp_path):
    Path("mine.yaml").write_text("my edits\n")
    code, out, err = run(capsys, "recipe", "cp", "lora/minilm_sst2", "mine.yaml")
    assert code == 2 and out == ""
    assert err == "lmforge: error: mine.yaml: already exists; not overwritten (choose another PATH or remove it)"
    assert Path("mine.yaml").read_text() == "my edits\n"


def test_cp_of_an_unknown_name_lists_the_close_matches(capsys, tmp_path):
    code, _, err = run(capsys, "recipe", "cp", "lora/minilm_sst", "mine.yaml")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("lmforge: error: unknown recipe 'lora/minilm_sst' (did you mean lora/minilm_sst2")
    assert "`lmforge list recipes` lists them all" in err
    code, _, err = run(capsys, "recipe", "cp", "nothing/like_it", "mine.yaml")
    assert code == 2
    assert err == "lmforge: error: unknown recipe 'nothing/like_it' (`lmforge list recipes` lists them all)"
    assert list(Path(".").iterdir()) == []  # nothing written


def test_cp_to_a_name_run_would_not_take_as_a_file_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "recipe", "cp", "lora/minilm_sst2", "mine.txt")
    assert code == 2
    assert err == "lmforge: error: mine.txt: a recipe file name ends in .yaml (`lmforge run` takes a .yaml path)"
    Path("taken").write_text("a file")
    code, _, err = run(capsys, "recipe", "cp", "lora/minilm_sst2", "taken/mine.yaml")
    assert code == 2 and err == "lmforge: error: taken: is a file, so taken/mine.yaml cannot be written there"
    assert sorted(p.name for p in Path(".").iterdir()) == ["taken"]


def test_a_copy_in_local_recipes_takes_the_place_of_the_shipped_one(capsys, tmp_path):
    code, _, _ = run(capsys, "recipe", "cp", "lora/minilm_sst2", "recipes/lora/minilm_sst2.yaml")
    assert code == 0
    local = tmp_path / "recipes" / "lora" / "minilm_sst2.yaml"
    assert list_recipes()["lora/minilm_sst2"] == local
    assert find_recipe("lora/minilm_sst2") == local
    assert list_recipes()["lora/minilm_trec6"].is_relative_to(shipped_recipes_dir())
    code, out, _ = run(capsys, "list", "recipes")
    line = next(line for line in out.splitlines() if line.split()[:1] == ["lora/minilm_sst2"])
    assert f"(your copy: {local})" in line


def test_recipe_help_explains_cp_and_the_lookup_order(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recipe", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "cp" in out and "./recipes/" in out and "lmforge list recipes" in out
    with pytest.raises(SystemExit):
        main(["recipe", "cp", "--help"])
    assert "lmforge run PATH" in capsys.readouterr().out
    code, _, err = run(capsys, "recipe")
    assert code == 2
    assert err == "lmforge: error: the following arguments are required: ACTION (see lmforge recipe --help)"
