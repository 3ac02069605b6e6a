"""Continual learning through the CLI on tiny-bert: a 3-task stream per strategy, the accuracy matrix and
its metrics, the report, `kill -9` then `--resume` equal to an uninterrupted stream, and bad input."""

import json
import signal
import time

import pytest
from conftest import run_cli, start_cli

from lmforge.methods.continual.metrics import stream_metrics

pytestmark = pytest.mark.slow

STREAM = [
    "continual/minilm_stream",
    "model.name=tiny-bert",
    "model.max_length=32",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
    "train.batch_size=16",
    "train.epochs=1",
    "train.lr=1e-3",
    "train.save_every=2",
    "train.log_every=1",
]


TWO_TASKS = {"adapters", "olora", "joint"}  # what their tests check needs two tasks, not three
STRATEGY_SETS = ["continual.replay_size=64", "continual.fisher_examples=32"]


def final(run_dir):
    return json.loads((run_dir / "final.json").read_text())


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual")
    out = {}
    for strategy in ("sequential", "replay", "lwf", "ewc", "adapters", "olora", "joint"):
        run_dir = root / strategy
        shorter = ["continual.tasks=sst2,trec6"] if strategy in TWO_TASKS else []
        result = run_cli(
            "run", *STREAM, f"continual.strategy={strategy}", *STRATEGY_SETS, *shorter, "--run-dir", str(run_dir)
        )
        assert result.returncode == 0, result.stderr[-2000:]
        out[strategy] = run_dir
    return out


def test_the_stream_folder_holds_each_task_and_the_matrix(streams):
    run_dir = streams["sequential"]
    for i, name in enumerate(["sst2", "trec6", "agnews"], start=1):
        assert (run_dir / "stages" / f"task-{i}-{name}" / "final.json").is_file()
        assert (run_dir / "stages" / f"scores-{i}.json").is_file()
    result = final(run_dir)
    assert len(result["matrix"]) == 3 and all(len(row) == 3 for row in result["matrix"])
    recomputed = stream_metrics(result["matrix"], result["before"])
    assert result["stream"] == recomputed
    # the diagonal is the task's own score right after training it: the child run's final evaluation
    for i, name in enumerate(result["tasks"]):
        child = json.loads((run_dir / "stages" / f"task-{i + 1}-{name}" / "final.json").read_text())
        assert result["matrix"][i][i] == pytest.approx(child["metrics"]["accuracy"])
    html = (run_dir / "report.html").read_text()
    assert "Accuracy matrix" in html and "backward transfer" in html and "<svg" in html


def test_each_strategy_trains_what_it_says(streams):
    def losses(strategy, task):
        folder = streams[strategy] / "stages" / task
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    train = [r for r in losses("replay", "task-2-trec6") if r["split"] == "train"]
    assert train and all(r["loss_replay"] > 0 for r in train)  # sst2 examples replayed during trec6
    assert all("loss_replay" not in r for r in losses("replay", "task-1-sst2"))  # nothing to replay yet
    assert final(streams["replay"])["replay_buffer"] == 64
    train = [r for r in losses("lwf", "task-3-agnews") if r["split"] == "train"]
    assert train and all(r["loss_distill"] > 0 for r in train)
    assert all("loss_distill" not in r and "loss_replay" not in r for r in losses("sequential", "task-2-trec6"))
    # EWC: no penalty while the first task trains; after it, a non-zero one (an EWC whose penalty is always 0
    # once shipped in a peer library), its anchor kept as a stage
    assert all("ewc_penalty" not in r for r in losses("ewc", "task-1-sst2"))
    train = [r for r in losses("ewc", "task-3-agnews") if r["split"] == "train"]
    assert train and all(r["ewc_penalty"] > 0 for r in train)
    assert (streams["ewc"] / "stages" / "fisher-2.safetensors").is_file()
    assert not (streams["ewc"] / "stages" / "fisher-3.safetensors").exists()  # no task after the last


def test_kill_9_then_resume_equals_the_uninterrupted_stream(streams, tmp_path):
    run_dir = tmp_path / "killed"
    process = start_cli("run", *STREAM, "continual.strategy=replay", *STRATEGY_SETS, "--run-dir", str(run_dir))
    target = run_dir / "stages" / "task-2-trec6" / "checkpoints" / "step-00000002"
    deadline = time.time() + 300
    while not target.exists():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "final.json").exists()
    result = run_cli("run", "continual/minilm_stream", "--resume", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    mine, theirs = final(run_dir), final(streams["replay"])
    for d in (mine, theirs):
        d.pop("train_seconds"), d.pop("task_train_seconds")
    assert mine == theirs


def test_adapters_isolate_each_task_and_olora_keeps_subspaces_apart(streams):
    from safetensors.torch import load_file

    first, last = (streams["adapters"] / "stages" / f"task-{i}" / "final" for i in ("1-sst2", "2-trec6"))
    for i, name in enumerate(["sst2", "trec6"], start=1):  # each task's own LoRA, beside the model
        assert (streams["adapters"] / "stages" / f"task-{i}-{name}" / "final" / "task_adapter.safetensors").is_file()
    before, after = load_file(str(first / "model.safetensors")), load_file(str(last / "model.safetensors"))
    encoder = [k for k in before if "classifier" not in k]
    assert encoder and all(before[k].equal(after[k]) for k in encoder)  # the shared body never moved
    olora = [json.loads(line) for line in (streams["olora"] / "stages" / "task-2-trec6" / "metrics.jsonl").open()]
    assert all(r["olora_penalty"] > 0 for r in olora if r["split"] == "train")  # orthogonality to task 1's A
    before, after = (load_file(str(streams["olora"] / "stages" / f"task-{i}" / "final" / "model.safetensors"))
                     for i in ("1-sst2", "2-trec6"))  # fmt: skip
    assert any(not before[k].equal(after[k]) for k in before if "query" in k)  # each task's LoRA merged in


def test_joint_training_is_one_run_over_every_task(streams):
    result = final(streams["joint"])
    assert result["matrix"] is None and (streams["joint"] / "stages" / "joint" / "final.json").is_file()
    assert result["metrics"]["average_accuracy"] == pytest.approx(
        sum(result["scores"][0][t]["accuracy"] for t in result["tasks"]) / 2
    )
    manifest = json.loads((streams["joint"] / "stages" / "joint" / "manifest.json").read_text())
    assert manifest["data"]["task"] == "joint"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["continual.tasks=sst2,nosuch"], "'nosuch': not a builtin dataset"),
        (["continual.tasks=sst2,sst2"], "named twice"),
        (["continual.setting=domain"], "share one label set"),
        (["data.train=sst2:train"], "not used by continual"),
        (["continual.strategy=adapters", "continual.setting=class"], "needs continual.setting: task"),
    ],
)
def test_bad_streams_are_refused_in_one_line_before_anything_is_written(tmp_path, overrides, message):
    run_dir = tmp_path / "bad"
    result = run_cli("run", *STREAM, *overrides, "--run-dir", str(run_dir))
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not run_dir.exists()


def test_a_causal_lm_stream_measures_each_domain_after_each_and_replays(tmp_path):
    run_dir = tmp_path / "lm"
    args = ["continual_lm/gemma_gsm8k_mbpp", "model.name=tiny-gpt2", "model.max_length=512", "train.max_steps=3",
            "train.eval_every=3", "data.max_train_examples=24", "continual_lm.held_out=8",
            "continual_lm.strategy=replay", "continual_lm.replay_size=8"]  # fmt: skip
    result = run_cli("run", *args, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    out = final(run_dir)
    assert out["tasks"] == ["gsm8k", "mbpp"] and len(out["loss_matrix"]) == 2 and len(out["before"]) == 2
    matrix = out["loss_matrix"]
    assert out["loss_rise_per_task"] == [pytest.approx(matrix[1][0] - matrix[0][0])]
    assert out["metrics"]["average_final_loss"] == pytest.approx(sum(matrix[1]) / 2)
    assert matrix[0][0] < out["before"][0]  # training on GSM8K lowered GSM8K's held-out loss
    # MBPP's training data holds its own pairs and 8 replayed GSM8K pairs
    rows = [json.loads(line) for line in (run_dir / "stages" / "train-2.jsonl").read_text().splitlines()]
    gsm8k = {json.loads(line)["prompt"] for line in (run_dir / "stages" / "train-1.jsonl").read_text().splitlines()}
    assert sum(r["prompt"] in gsm8k for r in rows) == 8 and out["replayed"] == 8
    # the stream's model continues: task 2 started from task 1's final model
    config = (run_dir / "stages" / "task-2-mbpp" / "config.yaml").read_text()
    assert str(run_dir / "stages" / "task-1-gsm8k" / "final") in config
    assert (run_dir / "final" / "config.json").is_file()
    assert "Held-out loss matrix" in (run_dir / "report.html").read_text()
