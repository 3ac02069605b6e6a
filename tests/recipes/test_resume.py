"""Exact resume after `kill -9` and after SIGTERM; gradient accumulation equals a bigger batch."""

import json
import os
import shlex
import shutil
import signal

import pytest
import torch
from conftest import run_cli, start_cli, wait_for_checkpoint

from lmforge.core.checkpoint import list_checkpoints

# Every test here runs the CLI in a fresh process (seconds each, more on a loaded machine):
# `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

RUN = [
    "finetune/minilm_sst2",
    "model.name=tiny-bert",
    "train.max_steps=80",
    "train.batch_size=8",
    "train.save_every=10",
    "train.eval_every=40",
    "train.log_every=1",
    "data.max_train_examples=200",
    "data.max_eval_examples=64",
]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final(run_dir):
    return json.loads((run_dir / "final.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    result = run_cli("run", *RUN, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def start(run_dir):
    return start_cli("run", *RUN, "--run-dir", str(run_dir))


def test_kill_9_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    process = start(run_dir)
    wait_for_checkpoint(run_dir, 20, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "final.json").exists(), "the kill came too late to test anything"
    for checkpoint in list_checkpoints(run_dir / "checkpoints"):  # every listed checkpoint is complete
        assert {p.name for p in checkpoint.iterdir()} == {
            "model.safetensors",
            "training_state.json",
            "training_state.safetensors",
            "state.json",
        }

    result = run_cli("run", "finetune/minilm_sst2", "--resume", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr
    assert final(run_dir) == final(uninterrupted)
    assert records(run_dir) == records(uninterrupted)


def test_sigterm_saves_a_checkpoint_and_resume_continues_exactly(uninterrupted, tmp_path):
    run_dir = tmp_path / "terminated"
    process = start(run_dir)
    wait_for_checkpoint(run_dir, 10, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "continue with --resume" in stderr
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    result = run_cli("run", "finetune/minilm_sst2", "--resume", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert final(run_dir) == final(uninterrupted)


def test_resume_of_a_finished_run_is_refused(uninterrupted):
    result = run_cli("run", "finetune/minilm_sst2", "--resume", "--run-dir", str(uninterrupted))
    assert result.returncode == 2 and "already finished" in result.stderr


def test_batch_8_equals_batch_1_with_accumulation_8(tmp_path):
    common = [
        "finetune/minilm_sst2",
        "model.name=tiny-bert",
        "model.dropout=0",
        "train.max_steps=12",
        "train.log_every=1",
        "train.eval_every=100",
        "data.max_train_examples=96",
        "data.max_eval_examples=8",
    ]
    losses = {}
    for batch, accum in ((8, 1), (1, 8)):
        run_dir = tmp_path / f"b{batch}a{accum}"
        result = run_cli(
            "run", *common, f"train.batch_size={batch}", f"train.grad_accum={accum}", "--run-dir", str(run_dir)
        )
        assert result.returncode == 0, result.stderr[-2000:]
        losses[batch] = [r["loss"] for r in records(run_dir) if r["split"] == "train"]
    assert len(losses[8]) == 12
    assert losses[8] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
    assert losses[8][0] != pytest.approx(losses[8][-1], rel=1e-3)  # training moved: the comparison means something


# ---- a checkpoint from someone else never runs code ------------------------------------------------


class RunsACommand:
    """Unpickling this runs a shell command that creates `marker`: what a crafted checkpoint file holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


ADALORA_SHORT = [
    "adalora/minilm_trec6",
    "model.name=tiny-bert",
    "train.max_steps=16",
    "train.batch_size=8",
    "train.save_every=8",
    "train.eval_every=100",
    "data.max_train_examples=64",
    "data.max_eval_examples=16",
    "adalora.init_r=3",
    "adalora.target_r=1",
    "adalora.tinit=2",
    "adalora.tfinal=4",
    "adalora.deltaT=2",
]
SHORT = [*RUN[:2], "train.max_steps=4", "train.save_every=2", "train.eval_every=100", *RUN[-2:]]


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """Runs whose last checkpoint a --resume would load: finished runs with final.json taken away."""
    runs = {}
    for name, args in (("finetune", SHORT), ("adalora", ADALORA_SHORT)):
        run_dir = tmp_path_factory.mktemp("crafted") / name
        result = run_cli("run", *args, "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-2000:]
        (run_dir / "final.json").unlink()
        runs[name] = run_dir
    return runs


def test_an_untouched_checkpoint_of_the_same_runs_resumes(resumable, tmp_path):
    for name, run_dir in resumable.items():
        copy = tmp_path / name
        shutil.copytree(run_dir, copy)
        result = run_cli("run", ADALORA_SHORT[0] if name == "adalora" else SHORT[0], "--resume", "--run-dir", str(copy))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "resumed from" in result.stderr


@pytest.mark.parametrize(
    "run, file",
    [
        ("finetune", "training_state.pt"),  # the optimizer state file of the old format
        ("adalora", "extra.pt"),  # a method's own state (AdaLoRA's importance averages) in the old format
        ("finetune", "training_state.safetensors"),  # a pickle under the name of a tensor file
        ("finetune", "model.safetensors"),
    ],
)
def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_runs_nothing(resumable, tmp_path, run, file):
    copy = tmp_path / run
    shutil.copytree(resumable[run], copy)
    checkpoint = list_checkpoints(copy / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    torch.save({"optimizer": RunsACommand(marker)}, checkpoint / file)
    recipe = ADALORA_SHORT[0] if run == "adalora" else SHORT[0]
    result = run_cli("run", recipe, "--resume", "--run-dir", str(copy))
    assert not marker.exists(), "the crafted file ran its command"
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if "lmforge: error" in line]
    assert len(error) == 1 and str(checkpoint / file) in error[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (copy / "final.json").exists()


@pytest.mark.parametrize(
    "state, message",
    [
        ([1], "state.json: not an lmforge training state"),
        ({"step": "4", "epoch": 0}, "state.json: step: expected a whole number >= 0, got '4'"),
        ({"step": 4, "stopped_early": "no"}, "state.json: stopped_early: expected true or false, got 'no'"),
    ],
)
def test_a_crafted_state_json_is_refused_naming_it(resumable, tmp_path, state, message):
    copy = tmp_path / "finetune"
    shutil.copytree(resumable["finetune"], copy)
    checkpoint = list_checkpoints(copy / "checkpoints")[-1]
    (checkpoint / "state.json").write_text(json.dumps(state))
    result = run_cli("run", SHORT[0], "--resume", "--run-dir", str(copy))
    error = [line for line in result.stderr.splitlines() if line.startswith("lmforge: error")]
    assert result.returncode == 2 and len(error) == 1, result.stderr[-2000:]
    assert error[0].startswith(f"lmforge: error: {checkpoint}/{message}") and not (copy / "final.json").exists()


def test_a_checkpoint_of_another_method_is_refused_naming_the_file(resumable, tmp_path):
    """AdaLoRA's checkpoints copied into a full fine-tuning run: its tensors are not this model's."""
    copy = tmp_path / "finetune"
    shutil.copytree(resumable["finetune"], copy)
    shutil.rmtree(copy / "checkpoints")
    shutil.copytree(resumable["adalora"] / "checkpoints", copy / "checkpoints")
    checkpoint = list_checkpoints(copy / "checkpoints")[-1]
    result = run_cli("run", SHORT[0], "--resume", "--run-dir", str(copy))
    error = [line for line in result.stderr.splitlines() if line.startswith("lmforge: error")]
    assert result.returncode == 2 and len(error) == 1, result.stderr[-2000:]
    assert error[0].startswith(f"lmforge: error: {checkpoint / 'model.safetensors'}: ")
    assert "from another model or method" in error[0] and not (copy / "final.json").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "extra.json").unlink(), "extra.json: missing, but this method keeps its own state"),
        (
            lambda c: (c / "extra.json").write_text(json.dumps({"format": 1, "state": {"dict": {"importance": []}}})),
            "extra.json: does not fit this run",
        ),
    ],
)
def test_adalora_without_its_own_state_in_the_checkpoint_is_refused(resumable, tmp_path, damage, message):
    """What a checkpoint of another method (LoRA's, with the same tensor names) would lack: AdaLoRA's allocator."""
    copy = tmp_path / "adalora"
    shutil.copytree(resumable["adalora"], copy)
    checkpoint = list_checkpoints(copy / "checkpoints")[-1]
    damage(checkpoint)
    result = run_cli("run", ADALORA_SHORT[0], "--resume", "--run-dir", str(copy))
    error = [line for line in result.stderr.splitlines() if line.startswith("lmforge: error")]
    assert result.returncode == 2 and len(error) == 1, result.stderr[-2000:]
    assert error[0].startswith(f"lmforge: error: {checkpoint}/{message}")
