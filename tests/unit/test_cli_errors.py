"""A bad config key or value is blamed on where it was written: the command line or the recipe file.

Through the CLI's own `main` in-process: the refusal happens while the config is read, before any model
loads or any run folder is made."""

import pytest

from lmforge.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def test_an_override_typo_is_blamed_on_the_command_line(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, err = run(capsys, "run", "lora/minilm_sst2", "lora.rank=4", "--run-dir", str(run_dir))
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("lmforge: error: command line (override 'lora.rank=4'): unknown key 'lora.rank'")
    assert "allowed under 'lora': r, alpha" in err
    assert "minilm_sst2.yaml" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", "command line (override 'train.lr=-1'): train.lr: expected a value > 0"),
        ("training.lr=1", "command line (override 'training.lr=1'): unknown key 'training'"),
        ("method=lorra", "command line (override 'method=lorra'): method: unknown method 'lorra'"),
    ],
)
def test_bad_override_values_name_the_override(capsys, tmp_path, override, message):
    code, err = run(capsys, "run", "lora/minilm_sst2", override, "--run-dir", str(tmp_path / "run"))
    assert code == 2 and message in err


def test_a_recipe_file_typo_still_names_the_file(capsys, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("method: lora\nmodel:\n  name: tiny-bert\nlora:\n  rank: 4\n")
    # An override of another key does not move the blame off the file.
    code, err = run(capsys, "run", str(recipe), "lora.r=4", "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert err.startswith(f"lmforge: error: {recipe}: unknown key 'lora.rank'")
    assert "command line" not in err


def test_an_override_that_fixes_a_file_value_is_not_blamed(capsys, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("method: lora\nmodel:\n  name: tiny-bert\ntrain:\n  lr: -1\n")
    code, err = run(capsys, "run", str(recipe), "train.lr=oops", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "command line (override 'train.lr=oops'): train.lr: expected a number" in err
    code, err = run(capsys, "run", str(recipe), "train.epochs=1", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and f"{recipe}: train.lr: expected a value > 0" in err


# ---- issue 23 items 8, 10, 11 through the CLI: exit 2, one line naming the key or file, no run folder --


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=inf", "train.lr"),
        ("train.lr=1e400", "train.lr"),
        ("train.weight_decay=nan", "train.weight_decay"),
        ("train.lr=nan", "train.lr"),
        ("train.epochs=inf", "train.epochs"),
        ("train.seed=4294967296", "train.seed"),
        ("lora.dropout=nan", "lora.dropout"),
    ],
)
def test_non_finite_or_out_of_range_numbers_exit_2_before_training(capsys, tmp_path, override, key):
    run_dir = tmp_path / "run"
    code, err = run(capsys, "run", "lora/minilm_sst2", "model.name=tiny-bert", override, "--run-dir", str(run_dir))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"command line (override '{override}'): {key}: expected a" in err
    assert not run_dir.exists()


def test_an_alias_bomb_recipe_is_one_short_line(capsys, tmp_path):
    recipe = tmp_path / "bomb.yaml"
    levels = "".join(f"{x}: &{x} [{','.join(['*' + p] * 10)}]\n" for p, x in zip("abcdefg", "bcdefgh", strict=False))
    recipe.write_text("method: lora\na: &a [" + ",".join(['"lol"'] * 10) + "]\n" + levels)
    code, err = run(capsys, "run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err == f"lmforge: error: {recipe}: line 3 invalid YAML: alias *a refused: write the value out"


def test_a_duplicate_key_in_a_recipe_is_refused(capsys, tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("method: lora\nmodel:\n  name: tiny-bert\ntrain:\n  lr: 1e-3\n  max_steps: 2\n  lr: 1e-1\n")
    code, err = run(capsys, "run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err == f"lmforge: error: {recipe}: line 7 invalid YAML: duplicate key 'lr'"
    assert not (tmp_path / "run").exists()


def test_a_huge_value_in_a_recipe_is_echoed_cut_short(capsys, tmp_path):
    recipe = tmp_path / "huge.yaml"
    recipe.write_text("method: lora\ntrain:\n  batch_size: " + "x" * 2_000_000 + "\n")
    code, err = run(capsys, "run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and len(err.splitlines()) == 1 and len(err) < 400
    assert "train.batch_size: expected an integer, got 'xxx" in err and "..." in err
