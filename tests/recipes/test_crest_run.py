"""CReST through the CLI on tiny-bert: the run folder (a child run per generation, the pseudo-labels as
stages), final.json and the report, and `kill -9` anywhere then `--resume` giving the uninterrupted result."""

import json
import signal
import time

import pytest
from conftest import run_cli, start_cli

from lmforge.core.checkpoint import load_extra

pytestmark = pytest.mark.slow

RUN = [
    "crest/minilm_trec6",
    "model.name=tiny-bert",
    "model.max_length=32",
    "train.max_steps=6",
    "train.batch_size=8",
    "train.save_every=2",
    "train.eval_every=3",
    "train.log_every=1",
    "data.max_train_examples=900",
    "data.max_eval_examples=32",
    "crest.generations=3",
    "crest.threshold=0.0",  # every pseudo-label counts, so the running distribution of CReST+ shapes each step
]


def final(run_dir):
    return json.loads((run_dir / "final.json").read_text())


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("crest") / "uninterrupted"
    result = run_cli("run", *RUN, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_the_run_folder_holds_each_generation_and_the_report(uninterrupted):
    stages = uninterrupted / "stages"
    for g in (1, 2, 3):
        assert (stages / f"generation-{g}" / "final.json").is_file()
    assert sorted(p.name for p in stages.glob("predictions-?.json")) == ["predictions-1.json", "predictions-2.json"]
    result = final(uninterrupted)
    assert [row["generation"] for row in result["generations"]] == [1, 2, 3]
    first, second = result["generations"][:2]
    assert second["labeled"] == first["labeled"] + sum(first["pseudo_labels"]["added"].values())
    assert result["metrics"] == {k: v for k, v in result["generations"][-1]["metrics"].items()
                                 if isinstance(v, float)}  # fmt: skip
    assert (uninterrupted / "final" / "config.json").is_file()
    html = (uninterrupted / "report.html").read_text()
    assert "Per-class recall" in html and "Pseudo-labels added" in html and "<svg" in html
    # a finished run works with the classifier commands
    predicted = run_cli("predict", str(uninterrupted), "who wrote hamlet ?")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert any(label in predicted.stdout for label in final(uninterrupted)["labels"])


def kill_when(run_dir, ready, timeout=300):
    process = start_cli("run", *RUN, "--run-dir", str(run_dir))
    deadline = time.time() + timeout
    while not ready(run_dir):
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.time() < deadline, "the kill point never came"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize(
    "where, ready",
    [
        ("in generation 1", lambda d: (d / "stages/generation-1/checkpoints/step-00000002").exists()),
        ("in generation 2", lambda d: (d / "stages/generation-2/checkpoints/step-00000004").exists()),
    ],
)
def test_kill_9_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path, where, ready):
    run_dir = tmp_path / "killed"
    kill_when(run_dir, ready)
    assert not (run_dir / "final.json").exists(), f"the kill {where} came too late to test anything"
    result = run_cli("run", "crest/minilm_trec6", "--resume", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    mine, theirs = final(run_dir), final(uninterrupted)
    for row in (*mine["generations"], *theirs["generations"]):
        row.pop("train_seconds"), row.get("pseudo_labels", {}).pop("examples_per_second", None)
    for key in ("train_seconds",):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs
    for g in (1, 2, 3):
        assert records(run_dir / f"stages/generation-{g}") == records(uninterrupted / f"stages/generation-{g}")
        # CReST+'s running distribution travels with the checkpoints: after the last step it is the same
        last = f"stages/generation-{g}/checkpoints/step-00000006"
        assert load_extra(run_dir / last) == load_extra(uninterrupted / last)
