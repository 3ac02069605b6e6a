import random

import torch

from lmforge.core.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from lmforge.core.loop import build_scheduler


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
    step(model, opt, sched)  # the uninterrupted continuation
    expected = [p.detach().clone() for p in model.parameters()]
    after = (random.random(), torch.rand(1))

    model2, opt2, sched2 = make()
    assert load_checkpoint(path, model2, opt2, sched2) == {"step": 1}
    step(model2, opt2, sched2)
    assert all(torch.equal(a, b) for a, b in zip(expected, model2.parameters(), strict=True))
    assert (random.random(), torch.rand(1)) == after


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
