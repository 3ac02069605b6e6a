"""The folder of a run made of stages and child runs: created once, resumed until it finishes."""

import json

import pytest

from lmforge.core.rundir import open_parent_run
from lmforge.errors import UserError


def test_a_parent_run_folder_is_created_once_and_resumed_until_it_finishes(tmp_path):
    folder = tmp_path / "stream"
    run = open_parent_run(folder, "method: demo\n", 7, {"tasks": ["a", "b"]}, resume=False)
    assert (folder / "stages").is_dir() and run.config.read_text() == "method: demo\n"
    manifest = json.loads(run.manifest.read_text())
    assert manifest["seed"] == 7 and manifest["data"] == {"tasks": ["a", "b"]}
    with pytest.raises(UserError, match="already exists"):
        open_parent_run(folder, "method: demo\n", 7, {}, resume=False)
    assert open_parent_run(folder, "method: demo\n", 7, {}, resume=True).path == folder
    (folder / "final.json").write_text("{}")
    with pytest.raises(UserError, match="already finished"):
        open_parent_run(folder, "method: demo\n", 7, {}, resume=True)
    with pytest.raises(UserError, match="no config.yaml"):
        open_parent_run(tmp_path / "elsewhere", "method: demo\n", 7, {}, resume=True)
