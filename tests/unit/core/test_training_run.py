"""The training run in-process on tiny-bert: what `start_training` + a loop written out + `finish` leave in
the run folder, resume from a checkpoint equal to no interruption, and batch x accumulation equivalence.

The loop (kernel_runs.py) is the one every recipe writes (methods/finetune/recipe.py), on made-up token ids:
the kernel knows no task, so none is needed to test it."""

import json
from functools import partial

import pytest
import torch
from kernel_runs import config, manifest_data, one_thread  # noqa: F401 (one_thread: an autouse fixture)
from kernel_runs import records as records_of
from kernel_runs import train as kernel_train

from lmforge.errors import Interrupted, UserError
from lmforge.models.classifier import load_classifier

MANIFEST_DATA = manifest_data(48)
# 48 made-up examples, tiny-bert's own dropout unless a test turns it off
train = partial(kernel_train, n_train=48, dropout=None)
records = partial(records_of, split=None)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "uninterrupted"
    t, final = train(config(), run_dir)
    return run_dir, t, final


def test_a_run_writes_its_config_manifest_metrics_final_and_report(uninterrupted):
    run_dir, t, final = uninterrupted
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "manifest.json", "metrics.jsonl", "final.json",
                                                   "final", "checkpoints", "report.html"}  # fmt: skip
    assert (run_dir / "config.yaml").read_text() == config().to_yaml()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"] == MANIFEST_DATA and manifest["recipe"] == "test/made_up" and manifest["seed"] == 42
    assert manifest["packages"]["torch"] and manifest["hardware"]["cpus"]

    lines = records(run_dir)
    assert [r["step"] for r in lines if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]  # log_every 1
    assert [r["step"] for r in lines if r["split"] == "eval"] == [3, 6]  # eval_every 3, and the last step
    assert all(r["loss"] > 0 and r["lr"] >= 0 for r in lines if r["split"] == "train")
    assert {"accuracy", "macro_f1", "loss"} <= set(lines[-1]) and "confusion" not in lines[-1]

    saved = json.loads((run_dir / "final.json").read_text())
    assert saved["metrics"] == {k: v for k, v in final.items() if k != "confusion"}
    assert saved["metrics"]["accuracy"] == lines[-1]["accuracy"]  # the last evaluation is the final one
    assert saved["labels"] == ["even", "odd"] and sum(map(sum, saved["confusion"])) == 16
    assert saved["steps"] == 6 and saved["trainable_parameters"] == saved["total_parameters"] > 0
    assert (run_dir / "final" / "config.json").is_file()
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-")]


def test_a_run_folder_in_use_is_refused_and_left_as_it_was(uninterrupted):
    run_dir, _, _ = uninterrupted
    before = sorted(p.name for p in run_dir.rglob("*"))
    with pytest.raises(UserError, match="run folder already exists"):
        train(config(), run_dir)
    with pytest.raises(UserError, match="already finished"):
        train(config(), run_dir, resume=True)
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_resume_after_a_stop_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    run_dir, _, final = uninterrupted
    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted, match="SIGTERM at step 4"):
        train(config(), stopped, stop_at=4)  # the checkpoint of step 4 is saved on the way out
    assert not (stopped / "final.json").exists()
    t, resumed = train(config(), stopped, resume=True)
    assert t.resumed_from.name == "step-00000004"
    assert records(stopped) == records(run_dir)  # dropout, data order and schedule continue exactly
    assert resumed == final


def test_batch_8_equals_batch_2_times_accumulation_4(tmp_path):
    """One step over the same 8 examples gives the same gradient whether in one micro-batch or four
    (dropout off: micro-batches draw dropout masks in another order)."""
    weights, losses = [], []
    for batch_size, grad_accum in ((8, 1), (2, 4)):
        cfg = config(max_steps=2, batch_size=batch_size, grad_accum=grad_accum, group_by_length=False)
        t, _ = train(cfg, tmp_path / f"b{batch_size}", dropout=0.0)
        weights.append({k: v.detach().clone() for k, v in t.unwrapped.state_dict().items()})
        losses.append([r["loss"] for r in records(tmp_path / f"b{batch_size}") if r["split"] == "train"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and len(losses[0]) == 2
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-6), name
    moved = {k: v for k, v in load_classifier("tiny-bert", ["even", "odd"], 42, 0.0)[0].state_dict().items()}
    assert any(not torch.equal(moved[k], weights[0][k]) for k in moved)  # the two steps did change the weights
