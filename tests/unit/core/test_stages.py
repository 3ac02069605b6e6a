"""Stages and child runs (core/stages.py): reuse, redo after a crash, refusal of other settings, atomicity."""

import json
import os

import pytest

from lmforge.core.stages import (
    FINISHED,
    FRESH,
    INTERRUPTED,
    child_run,
    finished_stage,
    make_stage,
)
from lmforge.errors import UserError

SETTINGS = {"temperature": 0.7, "n": 4, "model": "generator-1", "problems": ("a", "b")}


def write_lines(lines):
    def write(tmp):
        tmp.write_text("".join(line + "\n" for line in lines))

    return write


def write_folder(tmp):
    tmp.mkdir()
    (tmp / "weights.txt").write_text("w")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "more.txt").write_text("m")


def test_a_finished_stage_is_reused_and_not_written_again(tmp_path):
    assert finished_stage(tmp_path, "samples-1.jsonl", SETTINGS) is None
    made = make_stage(tmp_path, "samples-1.jsonl", SETTINGS, write_lines(["x", "y"]))
    assert made == tmp_path / "samples-1.jsonl" and made.read_text() == "x\ny\n"
    written = made.stat().st_mtime_ns
    # the same settings given another way (a list for the tuple, other key order) are the same settings
    again = dict(reversed(list({**SETTINGS, "problems": ["a", "b"]}.items())))
    assert finished_stage(tmp_path, "samples-1.jsonl", again) == made
    assert made.stat().st_mtime_ns == written
    record = json.loads((tmp_path / "samples-1.jsonl.stage.json").read_text())
    assert record == {"stage": "samples-1.jsonl", "settings": {**SETTINGS, "problems": ["a", "b"]}}


def test_a_folder_stage_lands_whole(tmp_path):
    made = make_stage(tmp_path / "stages", "verifier", SETTINGS, write_folder)  # the parent is made too
    assert (made / "sub" / "more.txt").read_text() == "m"
    assert finished_stage(tmp_path / "stages", "verifier", SETTINGS) == made
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["verifier", "verifier.stage.json"]


def test_a_stage_left_partial_by_a_crash_is_not_finished_and_is_made_again(tmp_path):
    # killed while writing: the temporary folder is there, half written, and the record already is
    tmp = tmp_path / "verifier.incomplete"
    tmp.mkdir()
    (tmp / "half.txt").write_text("half")
    (tmp_path / "verifier.stage.json").write_text(json.dumps({"stage": "verifier", "settings": SETTINGS}))
    assert finished_stage(tmp_path, "verifier", SETTINGS) is None
    made = make_stage(tmp_path, "verifier", SETTINGS, write_folder)
    assert sorted(p.name for p in made.iterdir()) == ["sub", "weights.txt"]  # nothing of the half-written try
    assert not tmp.exists()


def test_a_record_of_other_settings_without_its_output_is_not_a_refusal(tmp_path):
    # killed between the record and the rename, under other settings: nothing to reuse, so nothing to refuse
    (tmp_path / "s.jsonl.stage.json").write_text(json.dumps({"stage": "s.jsonl", "settings": {"n": 1}}))
    assert finished_stage(tmp_path, "s.jsonl", {"n": 2}) is None
    make_stage(tmp_path, "s.jsonl", {"n": 2}, write_lines(["new"]))
    assert finished_stage(tmp_path, "s.jsonl", {"n": 2}) == tmp_path / "s.jsonl"


def test_a_stage_made_with_other_settings_is_refused_naming_it_and_each_differing_key(tmp_path):
    made = make_stage(tmp_path, "samples-1.jsonl", SETTINGS, write_lines(["x"]))
    other = {**SETTINGS, "temperature": 1.0, "top_p": 0.9}
    del other["n"]
    with pytest.raises(UserError) as refused:
        finished_stage(tmp_path, "samples-1.jsonl", other)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"stage samples-1.jsonl: {made} was made with other settings: ")
    assert "n 4 (now not set); temperature 0.7 (now 1.0); top_p not set (now 0.9)" in message
    assert "model" not in message and "problems" not in message  # the keys that agree are not listed
    assert made.read_text() == "x\n"  # refused, not touched


def test_a_refusal_names_the_nested_setting_that_differs(tmp_path):
    settings = {"sampling": {"n": 2, "temperature": 0.7, "stop": ["\n\n"]}, "model": "generator-1"}
    make_stage(tmp_path, "test-1.jsonl", settings, write_lines(["x"]))
    other = {**settings, "sampling": {**settings["sampling"], "temperature": 0.9}}
    with pytest.raises(UserError, match=r"made with other settings: sampling\.temperature 0\.7 \(now 0\.9\); delete"):
        finished_stage(tmp_path, "test-1.jsonl", other)


def test_an_exception_inside_the_stage_leaves_nothing_that_looks_finished(tmp_path):
    def crash(tmp):
        write_folder(tmp)
        raise RuntimeError("out of memory half way")

    with pytest.raises(RuntimeError, match="half way"):
        make_stage(tmp_path, "verifier", SETTINGS, crash)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder, no record
    assert finished_stage(tmp_path, "verifier", SETTINGS) is None


def test_making_again_replaces_an_earlier_output_and_a_failed_remake_leaves_it_unfinished(tmp_path):
    make_stage(tmp_path, "s.jsonl", {"n": 1}, write_lines(["old"]))
    with pytest.raises(ValueError):
        make_stage(tmp_path, "s.jsonl", {"n": 2}, lambda tmp: (tmp.write_text("new, half"), int("x")))
    assert finished_stage(tmp_path, "s.jsonl", {"n": 2}) is None  # not the old output under the new settings
    assert make_stage(tmp_path, "s.jsonl", {"n": 2}, write_lines(["new"])).read_text() == "new\n"


def test_an_output_with_no_record_is_reused_as_it_is(tmp_path):
    (tmp_path / "samples-1.jsonl").write_text("copied in\n")  # from another run folder, without its record
    assert finished_stage(tmp_path, "samples-1.jsonl", SETTINGS) == tmp_path / "samples-1.jsonl"


def test_a_damaged_record_and_settings_json_cannot_hold_are_refused_before_any_work(tmp_path):
    make_stage(tmp_path, "s.jsonl", SETTINGS, write_lines(["x"]))
    (tmp_path / "s.jsonl.stage.json").write_text('{"stage": "s.jsonl", "sett')
    with pytest.raises(UserError, match=r"s\.jsonl\.stage\.json: not a stage record .*delete it and"):
        finished_stage(tmp_path, "s.jsonl", SETTINGS)
    with pytest.raises(TypeError):
        finished_stage(tmp_path, "other.jsonl", {"model": tmp_path})  # a Path is not JSON


def test_a_writer_that_writes_nothing_is_an_error_not_a_finished_stage(tmp_path):
    with pytest.raises(RuntimeError, match="wrote nothing"):
        make_stage(tmp_path, "s.jsonl", SETTINGS, lambda tmp: None)
    assert finished_stage(tmp_path, "s.jsonl", SETTINGS) is None


def test_a_child_run_is_fresh_then_interrupted_then_finished(tmp_path):
    child = child_run(tmp_path / "stages", "generator-1")
    assert (child.folder, child.state, child.resume) == (tmp_path / "stages" / "generator-1", FRESH, False)
    child.folder.mkdir(parents=True)  # made but nothing written: still fresh (training accepts an empty folder)
    assert child_run(tmp_path / "stages", "generator-1").state == FRESH
    (child.folder / "config.yaml").write_text("method: sft\n")
    interrupted = child_run(tmp_path / "stages", "generator-1")
    assert (interrupted.state, interrupted.resume) == (INTERRUPTED, True)
    (child.folder / "final.json").write_text("{}")
    finished = child_run(tmp_path / "stages", "generator-1")
    assert (finished.state, finished.resume) == (FINISHED, False)


def test_a_child_run_with_checkpoints_and_no_config_is_resumed(tmp_path):
    (tmp_path / "verifier" / "checkpoints" / "step-00000002").mkdir(parents=True)
    assert child_run(tmp_path, "verifier").state == INTERRUPTED


def test_a_crash_between_record_and_rename_leaves_no_output_under_a_stale_record(tmp_path, monkeypatch):
    """The new record lands before the new output: a crash between the two renames never pairs an output
    with the record of other settings (which would refuse a stage made with the very settings asked)."""
    make_stage(tmp_path, "s.jsonl", {"n": 1}, write_lines(["old"]))
    real_replace = os.replace

    def crash_on_the_output(src, dst):
        if str(dst) == str(tmp_path / "s.jsonl"):
            raise OSError("killed before the rename")
        real_replace(src, dst)

    monkeypatch.setattr("lmforge.core.stages.os.replace", crash_on_the_output)
    with pytest.raises(OSError, match="killed"):
        make_stage(tmp_path, "s.jsonl", {"n": 2}, write_lines(["new"]))
    monkeypatch.undo()
    assert finished_stage(tmp_path, "s.jsonl", {"n": 2}) is None  # to be made: no refusal, no old output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl.stage.json"]
