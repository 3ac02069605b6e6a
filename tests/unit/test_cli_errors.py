"""A bad config key or value is blamed on where it was written: the command line or the recipe file.

Through the CLI's own `main` in-process: the refusal happens while the config is read, before any model
loads or any run folder is made."""

import pytest

from lmforge.cli.main import main


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


# ---- issue 23 items 9 and 10: command arguments and user files, refused before any model loads ----------


@pytest.mark.parametrize("command", ["predict", "explain"])
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("texts.txt", b"fine\nna\xefve\n", "texts.txt:2: byte 0xef at column 3 is not UTF-8"),
        ("texts.csv", b"text\nfine\n" + b"x" * 131_073 + b"\n", "texts.csv:3: unreadable csv row: field larger"),
        ("texts.tsv", b"text\tid\ttext\nfine\t1\tb\n", "texts.tsv:1: column 'text' appears twice in the header"),
    ],
)
def test_a_bad_file_of_texts_is_one_line_naming_file_and_line(capsys, tmp_path, command, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    code, err = run(capsys, command, str(tmp_path / "no-run"), "--file", str(path))
    assert code == 2 and len(err.splitlines()) == 1 and message in err and str(path) in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "{run}", "hi", "--samples", "0"], "argument --samples: expected a value >= 1, got '0'"),
        (
            ["explain-eval", "{run}", "--data", "sst2:dev", "--samples", "0"],
            "argument --samples: expected a value >= 1",
        ),
        (["explain-global", "{run}", "--data", "sst2:dev", "--top", "0"], "argument --top: expected a value >= 1"),
        (["explain", "{run}", "hi", "--max-new-tokens", "-1"], "argument --max-new-tokens: expected a value >= 1"),
        (["probe", "minilm", "--seed", "-1"], "argument --seed: expected a value >= 0"),
        (["predict", "{run}", "hi", "--top", "0"], "argument --top: expected a value >= 1"),
        (["eval", "{run}", "--data", "sst2:dev", "--batch-size", "0"], "argument --batch-size: expected a value >= 1"),
        (["eval", "{run}", "--data", "sst2:dev", "--batch-size", "x" * 5000], "expected an integer, got 'xxx"),
    ],
)
def test_flag_values_out_of_range_are_one_line_naming_the_flag(capsys, tmp_path, argv, message):
    code, err = run(capsys, *[a.replace("{run}", str(tmp_path / "run")) for a in argv])
    assert code == 2 and len(err.splitlines()) == 1 and message in err and len(err) < 600, err
    assert err.endswith("--help)")


def test_explain_html_in_a_folder_that_does_not_exist_is_refused_not_made(capsys, tmp_path):
    html = tmp_path / "no" / "such" / "x.html"
    code, err = run(capsys, "explain", "tiny-gpt2", "The capital of France is", "--html", str(html))
    assert code == 2 and err == f"lmforge: error: --html {html}: no folder {html.parent} to write it in"
    assert not (tmp_path / "no").exists()
    code, err = run(capsys, "explain", "tiny-gpt2", "hi", "--html", str(tmp_path))
    assert code == 2 and err == f"lmforge: error: --html {tmp_path}: a folder; name the file to write"


@pytest.mark.parametrize("command", ["explain-eval", "explain-global"])
def test_an_out_folder_that_is_a_file_is_refused_before_work(capsys, tmp_path, command):
    (tmp_path / "file").write_text("mine")
    code, err = run(capsys, command, str(tmp_path / "run"), "--data", "sst2:dev", "--out", str(tmp_path / "file"))
    assert code == 2 and err == f"lmforge: error: --out {tmp_path / 'file'}: a file, not a folder"


def test_export_merge_onto_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "model.bin").write_text("mine")
    code, err = run(capsys, "export", str(tmp_path / "run"), "--merge", str(tmp_path / "model.bin"))
    assert code == 2 and err == f"lmforge: error: --merge {tmp_path / 'model.bin'}: a file, not a folder"
    assert (tmp_path / "model.bin").read_text() == "mine"


def made_run(tmp_path, recipe_config: str, manifest: dict | None):
    """A run folder as `lmforge run` leaves it after a kill: config.yaml and manifest.json, no final/."""
    import json

    from lmforge.cli.main import list_recipes

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(list_recipes()[recipe_config].read_text())
    if manifest is not None:
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_resume_naming_another_recipe_than_the_runs_is_refused(capsys, tmp_path):
    run_dir = made_run(tmp_path, "lora/minilm_sst2", {"seed": 42, "recipe": "lora/minilm_sst2"})
    code, err = run(capsys, "run", "lora/minilm_trec6", "--resume", "--run-dir", str(run_dir))
    assert code == 2 and err == (
        f"lmforge: error: {run_dir}: made with recipe lora/minilm_sst2, not lora/minilm_trec6; "
        f"continue it with lmforge run lora/minilm_sst2 --resume --run-dir {run_dir}"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "manifest.json"]


def test_resume_of_a_run_without_a_recorded_recipe_still_needs_its_method(capsys, tmp_path):
    run_dir = made_run(tmp_path, "lora/minilm_sst2", {"seed": 42})  # made before manifest.json named the recipe
    code, err = run(capsys, "run", "finetune/minilm_sst2", "--resume", "--run-dir", str(run_dir))
    assert (
        code == 2
        and err == f"lmforge: error: {run_dir}: a lora run, but recipe finetune/minilm_sst2 is a finetune recipe"
    )


def test_an_error_that_quotes_a_huge_argument_stays_a_bounded_line(capsys):
    code, err = run(capsys, "run", "x" * 100_000)  # "unknown recipe 'xxx...'" quotes the name whole
    assert code == 2 and len(err.splitlines()) == 1 and len(err) <= 2_000 + len("lmforge: error: ")
    assert err.startswith("lmforge: error: unknown recipe 'xxx") and err.endswith("...")
