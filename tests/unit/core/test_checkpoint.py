import copy
import errno
import json
import os
import random
import shlex

import numpy as np
import pytest
import torch

from lmforge.core.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_extra,
    save_checkpoint,
)
from lmforge.core.loop import build_scheduler
from lmforge.errors import UserError


def make():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt, build_scheduler(opt, 10, 0.1)


def step(model, opt, sched):
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_save_load_restores_tensors_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = make()
    step(model, opt, sched)
    path = save_checkpoint(tmp_path, 1, dict(model.named_parameters()), opt, sched, {"step": 1}, keep=2)
    saved_groups, saved_schedule = copy.deepcopy(opt.state_dict()["param_groups"]), sched.state_dict()
    step(model, opt, sched)  # the uninterrupted continuation
    expected = [p.detach().clone() for p in model.parameters()]
    after = (random.random(), np.random.rand(), torch.rand(1))

    model2, opt2, sched2 = make()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # other RNG states, which the load must replace
    assert load_checkpoint(path, model2, opt2, sched2) == {"step": 1}
    assert opt2.state_dict()["param_groups"] == saved_groups  # betas still a tuple
    assert sched2.state_dict() == saved_schedule
    step(model2, opt2, sched2)
    assert all(torch.equal(a, b) for a, b in zip(expected, model2.parameters(), strict=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == after
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "state.json",
        "training_state.json",
        "training_state.safetensors",
    ]


def test_only_complete_checkpoints_count_and_old_ones_are_pruned(tmp_path):
    model, opt, sched = make()
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, dict(model.named_parameters()), opt, sched, {"step": s}, keep=2)
    (tmp_path / ".tmp-step-00000004").mkdir()  # a save cut short by a crash
    (tmp_path / "step-00000005").mkdir()  # a folder without state.json is not a checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    save_checkpoint(tmp_path, 6, dict(model.named_parameters()), opt, sched, {"step": 6}, keep=2)
    assert not (tmp_path / ".tmp-step-00000004").exists()


def test_a_recipes_own_state_comes_back_with_its_types(tmp_path):
    model, opt, sched = make()
    extra = {  # AdaLoRA's allocator state has this shape
        "importance": {"layer.0.lora_A": torch.randn(3, 4), "layer.0.lora_E": torch.randn(3, 1).bfloat16()},
        "history": [{"step": 4, "budget": 30, "ranks": {"layer.0": 2}}, {"step": 6, "budget": 12.5, "ranks": {}}],
        "keep": [torch.ones(3, 1), torch.zeros(0)],
        "fixed": True,
        "pair": (1, None, "a", float("inf")),
        "by_number": {0: torch.tensor(2.0), 7: "x"},
    }
    path = save_checkpoint(tmp_path, 1, dict(model.named_parameters()), opt, sched, {"step": 1}, keep=2, extra=extra)
    loaded = load_extra(path)
    assert loaded.keys() == extra.keys()
    for name in ("importance", "by_number"):
        assert loaded[name].keys() == extra[name].keys()
        for key, value in extra[name].items():
            same = (
                torch.equal(loaded[name][key], value) if isinstance(value, torch.Tensor) else loaded[name][key] == value
            )
            assert same and type(loaded[name][key]) is type(value)
    assert loaded["importance"]["layer.0.lora_E"].dtype == torch.bfloat16
    assert loaded["history"] == extra["history"] and loaded["fixed"] is True and loaded["pair"] == extra["pair"]
    assert all(torch.equal(a, b) for a, b in zip(loaded["keep"], extra["keep"], strict=True))
    assert load_extra(save_checkpoint(tmp_path, 2, {}, opt, sched, {"step": 2}, keep=2)) is None


def test_state_that_is_not_tensors_and_plain_values_is_not_saved(tmp_path):
    model, opt, sched = make()
    with pytest.raises(TypeError, match="cannot be saved"):
        save_checkpoint(tmp_path, 1, {}, opt, sched, {"step": 1}, keep=2, extra={"scores": np.zeros(3)})


class RunsACommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.mark.parametrize("name", ["training_state.pt", "extra.pt"])
def test_a_checkpoint_of_the_old_pickle_format_is_refused_unread(tmp_path, name):
    model, opt, sched = make()
    path = save_checkpoint(tmp_path, 1, dict(model.named_parameters()), opt, sched, {"step": 1}, keep=2)
    marker = tmp_path / "ran"
    torch.save({"optimizer": RunsACommand(marker)}, path / name)
    with pytest.raises(UserError, match=f"{path / name}: a pickle file, which lmforge never loads") as refused:
        load_checkpoint(path, *make())
    assert "\n" not in str(refused.value)
    with pytest.raises(UserError, match="a pickle file"):
        load_extra(path)
    assert not marker.exists()


def write_json(path, value):
    path.write_text(json.dumps(value))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "training_state.json").write_text("{"), "training_state.json: not valid JSON"),
        (lambda p: write_json(p / "training_state.json", {"state": {}}), "not an lmforge checkpoint state"),
        (
            lambda p: write_json(p / "training_state.json", {"format": 1, "state": {"tensor": "999"}}),
            "tensor '999' is not in the safetensors file",
        ),
        (
            lambda p: write_json(p / "training_state.json", {"format": 1, "state": {"object": "os.system"}}),
            "unexpected value",
        ),
        (lambda p: write_json(p / "training_state.json", {"format": 1, "state": {"dict": {}}}), "does not fit"),
        (lambda p: (p / "training_state.safetensors").write_bytes(b"\x80\x04K\x01."), "not a readable safetensors"),
        (lambda p: (p / "training_state.safetensors").unlink(), "training_state.safetensors: missing"),
        (lambda p: (p / "model.safetensors").write_bytes(b"PK\x03\x04"), "model.safetensors: not a readable"),
        (lambda p: (p / "state.json").write_text("[1"), "state.json: unreadable"),
    ],
)
def test_a_damaged_or_crafted_checkpoint_is_one_line_naming_the_file(tmp_path, damage, message):
    model, opt, sched = make()
    step(model, opt, sched)
    path = save_checkpoint(tmp_path, 1, dict(model.named_parameters()), opt, sched, {"step": 1}, keep=2)
    damage(path)
    with pytest.raises(UserError, match=message) as refused:
        load_checkpoint(path, *make())
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    model, opt, sched = make()
    path = save_checkpoint(tmp_path, 1, {"encoder.weight": torch.zeros(2)}, opt, sched, {"step": 1}, keep=2)
    with pytest.raises(UserError, match="model.safetensors: tensors this run's model does not have"):
        load_checkpoint(path, *make())
    path = save_checkpoint(tmp_path, 2, {"weight": torch.zeros(5, 5)}, opt, sched, {"step": 2}, keep=2)
    with pytest.raises(UserError, match="model.safetensors: does not fit this run's model"):
        load_checkpoint(path, *make())


# ---- a full disk while a checkpoint is written (issue 23 item 9) ------------------------------------


def fill(folder):
    """Write into `folder` until the disk is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_a_full_disk_keeps_the_last_good_checkpoint_and_says_resume_continues(tmp_path):
    from conftest import small_disk

    with small_disk(tmp_path / "disk", "256k") as disk:
        model, opt, sched = make()
        step(model, opt, sched)
        good = save_checkpoint(disk, 1, dict(model.named_parameters()), opt, sched, {"step": 1}, keep=2)
        step(model, opt, sched)
        fill(disk)
        with pytest.raises(UserError) as refused:
            save_checkpoint(disk, 2, dict(model.named_parameters()), opt, sched, {"step": 2}, keep=2)
        assert str(refused.value) == (
            f"{disk}: the disk is full, so checkpoint step 2 was not saved; the last good checkpoint, "
            "step-00000001, is intact: free some space, then the same command with --resume continues from "
            "step-00000001"
        )
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "step-00000001"]  # no partial folder left
        assert latest_checkpoint(disk) == good and load_checkpoint(good, *make()) == {"step": 1}
        (disk / "filler").unlink()  # space freed: the next save works
        assert save_checkpoint(disk, 2, dict(model.named_parameters()), opt, sched, {"step": 2}, keep=2).is_dir()


def test_a_full_disk_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the write call itself fails with ENOSPC (safetensors' own error text)."""
    import lmforge.core.checkpoint as ckpt

    def out_of_space(tensors, filename, metadata=None):
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", out_of_space)
    model, opt, sched = make()
    with pytest.raises(UserError, match="the disk is full, so checkpoint step 3 was not saved; no earlier checkpoint"):
        save_checkpoint(tmp_path, 3, dict(model.named_parameters()), opt, sched, {"step": 3}, keep=2)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    import lmforge.core.checkpoint as ckpt

    def refused(tensors, filename, metadata=None):
        raise PermissionError(errno.EACCES, "Permission denied", filename)

    monkeypatch.setattr(ckpt, "save_file", refused)
    model, opt, sched = make()
    with pytest.raises(PermissionError):
        save_checkpoint(tmp_path, 1, dict(model.named_parameters()), opt, sched, {"step": 1}, keep=2)


@pytest.mark.parametrize(
    "name, message",
    [
        ("model.safetensors", "model.safetensors: not a readable safetensors file"),
        ("training_state.safetensors", "training_state.safetensors: not a readable safetensors file"),
        ("training_state.json", "training_state.json: not valid JSON"),
        ("state.json", "state.json: unreadable"),
    ],
)
def test_a_file_cut_short_is_named(tmp_path, name, message):
    model, opt, sched = make()
    step(model, opt, sched)
    path = save_checkpoint(tmp_path, 1, dict(model.named_parameters()), opt, sched, {"step": 1}, keep=2)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=message) as refused:
        load_checkpoint(path, *make())
    assert str(path / name) in str(refused.value) and "\n" not in str(refused.value)
