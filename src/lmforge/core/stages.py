"""Stages and child runs: the parts of a run that are worth keeping when the run stops half way.

A recipe that runs other work (samples drawn from a model, a model trained from a model, scores)
keeps each piece inside its run folder, so that `--resume` picks up at the first unfinished one.

A **stage** is one output, a file or a folder, named `name` inside `folder`:
- it is written under `<name>.incomplete` and renamed into place in one `os.replace`, so a crash
  (even `kill -9`) leaves either the finished output or none; an output at its name is finished;
- the settings that made it (a JSON dict) are kept beside it in `<name>.stage.json`, and a finished
  stage made with other settings is refused with one line naming the stage and the differing keys,
  never reused by mistake. An output with no record beside it (copied in from another run folder,
  or made before records were kept) is reused as it is: there is nothing to check it against;
- leftovers of an interrupted try (the temporary output, a record whose output never landed) are
  cleared when the stage is made again.

A **child run** is a training run (`core/training_run.py`) in `folder/name`: FINISHED when its
final.json is there (reuse it), INTERRUPTED with a config.yaml or checkpoints/ but no final.json
(resume it), FRESH otherwise (start it).

    path = finished_stage(run_dir / "stages", "samples-1.jsonl", settings)
    if path is None:
        samples = draw_samples(...)
        path = make_stage(run_dir / "stages", "samples-1.jsonl", settings, lambda tmp: write(tmp, samples))

    child = child_run(run_dir / "stages", "generator-1")
    if child.state != FINISHED:
        train(cfg, child.folder, resume=child.resume)

Only `make_stage` writes: under `accelerate launch` one process makes a stage, the others wait for it.
A recipe that every process runs through (a parent run whose child runs train on every process) makes its
stages with `shared_stage` and looks at its child runs with `shared_child_run`, which wait for the others:

    path = shared_stage(run_dir / "stages", "scores-1.json", settings, lambda tmp: tmp.write_text(score()))
    scores = json.loads(path.read_text())             # the main process's scores, on every process
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.core.processes import is_main_process, wait_for_everyone
from lmforge.errors import UserError, shown

INCOMPLETE_SUFFIX = ".incomplete"  # the output while it is being written
RECORD_SUFFIX = ".stage.json"  # the settings that made the output
FRESH, INTERRUPTED, FINISHED = "fresh", "interrupted", "finished"
MISSING = object()  # a key one side of a settings comparison does not have


def finished_stage(folder: Path, name: str, settings: dict) -> Path | None:
    """`folder/name` when that stage is finished and was made with `settings`; None when it is still to
    be made (absent, or left partial by a crash). A finished stage made with other settings is a
    UserError naming the stage and each differing key."""
    output, record = Path(folder) / name, Path(folder) / (name + RECORD_SUFFIX)
    wanted = as_json(settings)  # a value JSON cannot hold fails here, before any work
    if not output.exists():
        return None
    if not record.is_file():
        return output  # made before records were kept, or copied in: nothing to compare with
    made, wanted = flat(read_record(record, output)), flat(wanted)
    differ = [
        f"{key} {setting(made, key)} (now {setting(wanted, key)})"
        for key in sorted(set(made) | set(wanted))
        if made.get(key, MISSING) != wanted.get(key, MISSING)
    ]
    if differ:
        raise UserError(
            f"stage {name}: {output} was made with other settings: {'; '.join(differ)}; "
            "delete it to make it again with these, or use another run folder"
        )
    return output


def make_stage(folder: Path, name: str, settings: dict, write: Callable[[Path], object]) -> Path:
    """Make stage `name` in `folder` and return its path: `write(tmp)` writes the output (a file or a
    folder) at the temporary path `tmp`; then the settings are recorded and the output renamed into
    place. Leftovers of an earlier try, and an earlier output of that name, are removed first. When
    `write` raises, nothing of this try is left and the exception goes on."""
    folder = Path(folder)
    output, tmp = folder / name, folder / (name + INCOMPLETE_SUFFIX)
    record = folder / (name + RECORD_SUFFIX)
    text = json.dumps({"stage": name, "settings": as_json(settings)}, indent=1) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    for path in (tmp, output):
        remove(path)
    try:
        write(tmp)
        if not tmp.exists():
            raise RuntimeError(f"stage {name}: the stage's writer wrote nothing at {tmp}")
        # The record lands first: a crash between the renames leaves a record without its output
        # (not finished, made again), never an output beside the record of other settings.
        record_tmp = record.with_name(record.name + INCOMPLETE_SUFFIX)
        record_tmp.write_text(text, encoding="utf-8")
        os.replace(record_tmp, record)
        os.replace(tmp, output)
    except BaseException:
        remove(tmp)
        raise
    return output


def shared_stage(folder: Path, name: str, settings: dict, write: Callable[[Path], object]) -> Path:
    """Stage `name` for a recipe that every process runs: the main process makes it (`write(tmp)`, as in
    `make_stage`) unless it is finished, the others wait until it is there; its path, on every process.
    The work goes into `write`, so that only the main process does it, and every process then reads the
    same output (a model's predictions computed once, not once per process and maybe apart in the last bit)."""
    if is_main_process() and finished_stage(folder, name, settings) is None:
        make_stage(folder, name, settings, write)
    wait_for_everyone()
    return Path(folder) / name


@dataclass(frozen=True)
class ChildRun:
    folder: Path
    state: str  # FRESH, INTERRUPTED or FINISHED

    @property
    def resume(self) -> bool:
        """What to pass as `resume=` to the child's training: continue it from its last checkpoint."""
        return self.state == INTERRUPTED


def child_run(parent: Path, name: str) -> ChildRun:
    """The child run in `parent/name` and whether it is FINISHED, INTERRUPTED or FRESH (module docstring)."""
    folder = Path(parent) / name
    if (folder / "final.json").is_file():  # written last by a training run's finish
        return ChildRun(folder, FINISHED)
    if (folder / "config.yaml").is_file() or (folder / "checkpoints").is_dir():
        return ChildRun(folder, INTERRUPTED)
    return ChildRun(folder, FRESH)


def shared_child_run(parent: Path, name: str) -> ChildRun:
    """`child_run` for a recipe that every process runs: every process reads the child's state before any
    starts it (the main process then writes its folder), so that all take the same branch."""
    child = child_run(parent, name)
    wait_for_everyone()
    return child


def as_json(settings: dict) -> dict:
    """`settings` as it reads back from JSON (tuples become lists, keys strings), to compare like with like."""
    return json.loads(json.dumps(settings, sort_keys=True))


def flat(settings: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict of dotted keys, so that a refusal names the very setting that differs."""
    out = {}
    for key, value in settings.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key: value})
    return out


def setting(settings: dict, key: str) -> str:
    """One setting's value for an error message: short, and "not set" when the key is absent."""
    return shown(settings[key], 60) if key in settings else "not set"


def read_record(record: Path, output: Path) -> dict:
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        settings = saved["settings"]
        if not isinstance(settings, dict):
            raise TypeError("settings is not a JSON object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{record}: not a stage record ({e}); delete it and {output} to make the stage again") from e
    return settings


def remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder; nothing when absent."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
