"""A training run whose disk fills up while it writes a checkpoint (issue 23 item 9): exit 2 with one
line saying the disk is full and that --resume continues from the last good checkpoint, which is
intact; after space is freed, --resume finishes the run. The run folder is a small tmpfs, so the disk
fills for real (skipped where a tmpfs cannot be mounted)."""

import json
import subprocess

import pytest

TINY = [
    "finetune/minilm_sst2",
    "model.name=tiny-bert",
    "train.max_steps=4",
    "train.save_every=2",
    "train.eval_every=100",
    "train.batch_size=8",
    "data.max_train_examples=40",
    "data.max_eval_examples=16",
]


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_stops_the_run_and_resume_continues(tmp_path):
    from conftest import run_cli, small_disk

    # A checkpoint of this run is about 2.1 MB: 3 MB holds the first one but not the second beside it.
    with small_disk(tmp_path / "disk", "3m") as disk:
        run_dir = disk / "run"
        result = run_cli("run", *TINY, "--run-dir", str(run_dir))
        errors = [line for line in result.stderr.splitlines() if line.startswith("lmforge: error")]
        assert result.returncode == 2, result.stderr[-2000:]
        assert errors == [
            f"lmforge: error: {run_dir / 'checkpoints'}: the disk is full, so checkpoint step 4 was not saved; "
            "the last good checkpoint, step-00000002, is intact: free some space, then the same command with "
            "--resume continues from step-00000002"
        ]
        assert "Traceback" not in result.stderr
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002"]
        assert not (run_dir / "final.json").exists()

        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        result = run_cli("run", *TINY[:1], "--resume", "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "resumed from" in result.stderr and "step-00000002" in result.stderr
        assert json.loads((run_dir / "final.json").read_text())["steps"] == 4
