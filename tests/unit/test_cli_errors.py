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
