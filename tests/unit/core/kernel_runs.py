"""A training run of the kernel as every recipe writes it (methods/finetune/recipe.py), on tiny-bert and made-up
token ids, for the tests of the training run (test_training_run.py), train.report_to (test_trackers.py) and
model.dtype (test_model_dtype.py)."""

import json
import time
from functools import partial

import pytest
import torch

from lmforge.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from lmforge.core.loop import StopSignal, seed_everything
from lmforge.core.training_run import start_training
from lmforge.data.classify import EncodedTask, classification_loss, evaluate
from lmforge.models.classifier import load_classifier


def manifest_data(n_train: int) -> dict:
    """What manifest.json records under "data" for `made_up_data(n_train)`."""
    return {"train": {"source": "made up", "examples": n_train}, "eval": {"source": "made up", "examples": 16}}


MANIFEST_DATA = manifest_data(32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs fastest on one thread, and far slower when a second competes for a busy core.
    Autouse in every test module that imports it (`from kernel_runs import one_thread`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def made_up_data(n_train: int = 32) -> EncodedTask:
    """Sequences of 3-12 token ids, label = whether the first id is even."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        ids = [torch.randint(5, 900, (int(torch.randint(3, 13, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]  # fmt: skip
        return ids, [x[0] % 2 for x in ids]

    (train_ids, train_labels), (eval_ids, eval_labels) = split(n_train), split(16)
    return EncodedTask(train_ids, train_labels, eval_ids, eval_labels, 2)


def config(model: dict | None = None, **train) -> RunConfig:
    settings = {"max_steps": 6, "batch_size": 8, "eval_every": 3, "save_every": 3, "log_every": 1, "lr": 1e-3}
    return RunConfig(
        method="finetune",
        model=ModelConfig(name="tiny-bert", **(model or {})),
        data=DataConfig(train="made up", eval="made up"),
        train=TrainConfig(**{**settings, **train}),
        recipe="test/made_up",
    )


def train(cfg: RunConfig, run_dir, resume=False, crash_after=None, stop_at=None, n_train=32, dropout=0.0):
    """The loop every recipe writes; `crash_after`: the process dies (an exception) after that step's logging;
    `stop_at`: a SIGTERM arrives during that step (the run stops with a checkpoint); `dropout`: None keeps
    tiny-bert's own rates."""
    data = made_up_data(n_train)
    seed_everything(cfg.train.seed)
    model, tokenizer = load_classifier("tiny-bert", ["even", "odd"], cfg.train.seed, dropout)
    manifest = manifest_data(n_train)
    t = start_training(cfg, run_dir, resume, model, tokenizer, data.lengths, manifest, select_metric="accuracy")
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
            if t.state.step == crash_after:
                raise RuntimeError(f"killed after step {crash_after}")
    summary = lambda final: {"labels": ["even", "odd"], "confusion": final["confusion"]}  # noqa: E731
    final = t.finish(lambda model, tokenizer, folder: model.save_pretrained(folder), summary)
    return t, final


def records(run_dir, split: str | None = "train"):
    """metrics.jsonl's records of `split` (None: every record)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if split is None or r["split"] == split]
