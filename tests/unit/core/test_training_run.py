"""The training run in-process on tiny-bert: what `start_training` + a loop written out + `finish` leave in
the run folder, resume from a checkpoint equal to no interruption, and batch x accumulation equivalence.

The loop here is the one every recipe writes (methods/finetune/recipe.py), on made-up token ids: the
kernel knows no task, so none is needed to test it."""

import json
import time
from functools import partial

import pytest
import torch

from lmforge.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from lmforge.core.loop import StopSignal, seed_everything
from lmforge.core.training_run import start_training
from lmforge.data.classify import EncodedTask, classification_loss, evaluate
from lmforge.errors import Interrupted, UserError
from lmforge.models.classifier import load_classifier

MANIFEST_DATA = {"train": {"source": "made up", "examples": 48}, "eval": {"source": "made up", "examples": 16}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs fastest on one thread, and far slower when a second competes for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def made_up_data(seed: int = 0) -> EncodedTask:
    """48 training and 16 evaluation sequences of 3-12 token ids, label = whether the first id is even."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        ids = [torch.randint(5, 900, (int(torch.randint(3, 13, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]  # fmt: skip
        return ids, [x[0] % 2 for x in ids]

    (train_ids, train_labels), (eval_ids, eval_labels) = split(48), split(16)
    return EncodedTask(train_ids, train_labels, eval_ids, eval_labels, 2)


def config(**train) -> RunConfig:
    settings = {"max_steps": 6, "batch_size": 8, "eval_every": 3, "save_every": 3, "log_every": 1, "lr": 1e-3}
    return RunConfig(
        method="finetune",
        model=ModelConfig(name="tiny-bert"),
        data=DataConfig(train="made up", eval="made up"),
        train=TrainConfig(**{**settings, **train}),
        recipe="test/made_up",
    )


def train(cfg: RunConfig, run_dir, resume=False, stop_at=None, dropout=None):
    """A classifier run as a recipe writes it; `stop_at`: a SIGTERM arrives during that step."""
    data = made_up_data()
    seed_everything(cfg.train.seed)
    model, tokenizer = load_classifier("tiny-bert", ["even", "odd"], cfg.train.seed, dropout)
    t = start_training(cfg, run_dir, resume, model, tokenizer, data.lengths, MANIFEST_DATA, select_metric="accuracy")
    pad_id, device = tokenizer.pad_token_id, t.accelerator.device
    t.evaluator = partial(evaluate, t.model, data.eval_ids, data.eval_labels, 2, pad_id, 16, device, desc=None)
    with StopSignal() as stop:
        while t.running():
            batch, started = next(t.batches), time.perf_counter()
            loss = t.accumulate(batch, partial(classification_loss, t.model, data, step_size=batch.size,
                                               pad_id=pad_id, device=device))  # fmt: skip
            t.optimizer_step(batch)
            t.optimizer.zero_grad(set_to_none=True)
            if t.state.step == stop_at:
                stop.requested = "SIGTERM"
            t.end_step(loss, started, stop)

    def save(model, tokenizer, folder):
        model.save_pretrained(folder)

    final = t.finish(save, lambda final: {"labels": ["even", "odd"], "confusion": final["confusion"]})
    return t, final


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
