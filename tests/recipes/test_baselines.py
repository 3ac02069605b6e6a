"""Every shipped recipe still gives the numbers recorded in baselines.json (see baselines.py): each
command is run again through the CLI and every recorded metrics.jsonl and final.json value compared."""

import json
from pathlib import Path

import pytest
from baselines import BASELINES_FILE, COMMANDS, command_for, differences, machine, run_all, with_earlier_runs

RECORDED = json.loads(BASELINES_FILE.read_text())

# On the machine that recorded them the runs are deterministic: the same command gives bit-identical
# numbers. Another CPU (or another thread count, or torch version) may sum in another order and
# take other kernels, which moves float results in their last digits; 1e-5 relative allows that much
# and no more (a changed learning rate or batch moves the losses by far more).
SAME_MACHINE = machine() == RECORDED["machine"]
RELATIVE_TOLERANCE = 0.0 if SAME_MACHINE else 1e-5


def test_every_shipped_recipe_has_a_baseline():
    from lmforge.cli.main import list_recipes

    recorded_recipes = {entry["command"][2] for entry in RECORDED["baselines"].values()}
    assert set(list_recipes()) <= recorded_recipes
    assert set(RECORDED["baselines"]) == set(COMMANDS), "baselines.json is out of date: run baselines.py --record"
    for name, entry in RECORDED["baselines"].items():  # the numbers belong to the commands the table holds
        assert entry["command"] == ["lmforge", *command_for(name, Path("RUNS"))], name


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """NAME -> what its command gives now; each run once, with the runs it needs (so -k selects cheaply)."""
    root, done = tmp_path_factory.mktemp("baselines"), {}

    def result(name: str) -> dict:
        needed = [n for n in with_earlier_runs([name]) if n not in done]
        if needed:
            done.update(run_all(root, needed))
        return done[name]

    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_recipe_gives_its_recorded_numbers(rerun, name):
    recorded = RECORDED["baselines"][name]["values"]
    found = differences(recorded, rerun(name)["values"], name, rel=RELATIVE_TOLERANCE)
    assert recorded["metrics.jsonl"], "a baseline with no metrics records checks nothing"
    assert not found, f"{len(found)} values differ from baselines.json:\n" + "\n".join(found[:40])
