"""`lmforge explain --method ig` options: adaptive by default, --ig-tolerance / --ig-max-steps, --ig-steps fixed;
each text's steps and completeness error in the --json output. On a finished tiny run kept in tests/data."""

import json
import shutil
from pathlib import Path

import pytest

from lmforge.cli.main import main

RUN = Path(__file__).resolve().parents[2] / "data" / "runs_before_the_kernel" / "finetune" / "minilm_sst2"
TEXTS = ["a gorgeous film", "dull and overlong"]


@pytest.fixture
def run(tmp_path) -> Path:
    """A copy of the run folder: explain writes its HTML page into the run."""
    return Path(shutil.copytree(RUN, tmp_path / "run"))


def explain_json(run: Path, capsys, *options: str) -> list[dict]:
    assert main(["explain", str(run), *TEXTS, "--method", "ig", "--json", *options]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


@pytest.mark.slow  # MiniLM loaded three times: about 15 s on 2 cores
def test_ig_reports_steps_and_completeness_error_per_text(run, capsys):
    adaptive = explain_json(run, capsys, "--ig-tolerance", "0.2", "--ig-max-steps", "32")
    assert len(adaptive) == len(TEXTS)
    for row in adaptive:
        assert row["ig_steps"] in (8, 16, 32)
        assert row["ig_completeness_error"] <= 0.2 or row["ig_steps"] == 32
    tight = explain_json(run, capsys, "--ig-tolerance", "0", "--ig-max-steps", "16")
    assert [row["ig_steps"] for row in tight] == [16, 16]  # tolerance 0: every text runs to the cap
    fixed = explain_json(run, capsys, "--ig-steps", "20")
    assert [row["ig_steps"] for row in fixed] == [20, 20]
    assert all(row["ig_completeness_error"] >= 0 for row in fixed)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--ig-steps", "20", "--ig-tolerance", "0.1"], "--ig-steps fixes the steps"),
        (["--method", "grad", "--ig-steps", "20"], "apply to --method ig"),
    ],
)
def test_conflicting_ig_options_are_one_clear_error(run, capsys, options, message):
    assert main(["explain", str(run), TEXTS[0], *options]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (run / "explanations").exists()  # nothing written


@pytest.mark.parametrize("option", [["--ig-tolerance", "nan"], ["--ig-tolerance", "-1"], ["--ig-max-steps", "4"]])
def test_bad_ig_values_are_refused_by_the_parser(run, capsys, option):
    assert main(["explain", str(run), TEXTS[0], *option]) == 2
    assert option[0] in capsys.readouterr().err
