"""Two CPU processes under `accelerate launch` train the same model as one process (DDP, gloo)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

# Every test here runs the CLI in a fresh process (seconds each, more on a loaded machine):
# `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

COMMON = [
    "finetune/minilm_sst2",
    "model.name=tiny-bert",
    "model.dropout=0",
    "train.max_steps=8",
    "train.batch_size=8",
    "train.log_every=1",
    "data.max_train_examples=64",
    "data.max_eval_examples=64",
]


def test_two_processes_match_one(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run_cli("run", *COMMON, "--run-dir", str(single)).returncode == 0
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    result = subprocess.run(
        [*launcher, "-m", "lmforge", "run", *COMMON, "--run-dir", str(ddp)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    def losses(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"train"' in line]

    assert len(losses(ddp)) == 8, "only the main process writes metrics"
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-4, abs=1e-5)
    final = {r: json.loads((r / "final.json").read_text())["metrics"] for r in (single, ddp)}
    assert final[ddp]["loss"] == pytest.approx(final[single]["loss"], rel=1e-4)
