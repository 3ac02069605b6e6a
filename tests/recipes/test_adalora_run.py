"""AdaLoRA end to end through the CLI on tiny-bert: exact resume with the allocator's state, reload,
export --merge, the report's rank heat map, tfinal = 0 ending at the target budget, and a schedule
too short to move refused up front."""

import json
import signal

import pytest
import torch
from conftest import run_cli, start_cli, wait_for_checkpoint

# Every test here runs the CLI in a fresh process (seconds each, more on a loaded machine):
# `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

RUN = [
    "adalora/minilm_trec6",
    "model.name=tiny-bert",
    "train.max_steps=40",
    "train.batch_size=8",
    "train.save_every=10",
    "train.eval_every=20",
    "train.log_every=1",
    "data.max_train_examples=200",
    "data.max_eval_examples=64",
    "adalora.init_r=3",
    "adalora.target_r=1",
    "adalora.tinit=4",
    "adalora.tfinal=10",
    "adalora.deltaT=3",
]


def read(run_dir, name):
    path = run_dir / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("adalora") / "run"
    result = run_cli("run", *RUN, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_budget_falls_to_the_target_and_is_logged(finished):
    allocation = read(finished, "adalora.json")
    assert allocation["init_budget"] == 3 * 12 and allocation["target_budget"] == 12  # 2 layers x 6 matrices
    assert sum(allocation["final_ranks"].values()) == 12
    budgets = [h["budget"] for h in allocation["history"]]
    assert budgets[0] < 36 and budgets[-1] == 12 and budgets == sorted(budgets, reverse=True)
    logged = [r["budget"] for r in read(finished, "metrics.jsonl") if r["split"] == "train"]
    assert logged[0] == 36 and logged[-1] == 12
    config = read(finished, "final/adapter_config.json")
    assert config["peft_type"] == "ADALORA" and config["total_step"] == 40
    assert sum(sum(kept) for kept in config["rank_pattern"].values()) == 12


def test_report_shows_the_rank_heat_map_and_the_budget(finished):
    html = (finished / "report.html").read_text()
    assert "AdaLoRA: final rank of each adapted matrix" in html and "<th>W_f1</th>" in html
    assert "Total rank budget" in html
    (finished / "report.html").unlink()
    assert run_cli("report", str(finished)).returncode == 0  # rebuilt with the method's sections
    assert "<th>W_f1</th>" in (finished / "report.html").read_text()


def test_kill_9_then_resume_equals_an_uninterrupted_run(finished, tmp_path):
    run_dir = tmp_path / "killed"
    process = start_cli("run", *RUN, "--run-dir", str(run_dir))
    wait_for_checkpoint(run_dir, 20, process)  # mid-schedule: the importance averages matter
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "final.json").exists(), "the kill came too late to test anything"
    result = run_cli("run", "adalora/minilm_trec6", "--resume", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr
    assert read(run_dir, "metrics.jsonl") == read(finished, "metrics.jsonl")
    assert read(run_dir, "adalora.json") == read(finished, "adalora.json")
    assert read(run_dir, "final.json")["metrics"] == read(finished, "final.json")["metrics"]


def test_saved_adapter_reloads_and_merges_to_the_same_logits(finished, tmp_path):
    from lmforge.cli.main import load_finished_run
    from lmforge.models.classifier import load_saved_classifier

    result = run_cli("eval", str(finished), "--data", "trec6:dev")
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "merged"
    result = run_cli("export", str(finished), "--merge", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    merged, tokenizer = load_saved_classifier(out)
    _, _, adapted, _ = load_finished_run(finished)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    batch = tokenizer(["what is the capital of peru ?", "who wrote hamlet ?"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**batch).logits, adapted(**batch).logits, atol=1e-5)


def test_tfinal_zero_saves_exactly_the_target_budget(tmp_path):
    """peft's default tfinal = 0: the last re-allocation on the deltaT grid is step 35 of 40, and the
    optimizer steps after it must not revive the pruned triplets in final/, adalora.json or the count."""
    run_dir = tmp_path / "run"
    result = run_cli("run", *RUN, "adalora.tfinal=0", "adalora.deltaT=7", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    allocation = read(run_dir, "adalora.json")
    assert [h["step"] for h in allocation["history"]][-2:] == [35, 40] and allocation["history"][-1]["budget"] == 12
    assert sum(allocation["final_ranks"].values()) == 12
    config = read(run_dir, "final/adapter_config.json")
    assert sum(sum(kept) for kept in config["rank_pattern"].values()) == 12
    from safetensors.torch import load_file

    tensors = load_file(run_dir / "final" / "adapter_model.safetensors")
    assert sum(t.shape[0] for name, t in tensors.items() if name.endswith("lora_E")) == 12
    assert "final budget: 12 triplets" in result.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adalora.tinit=30", "adalora.tfinal=10"], "the budget never moves"),
        (["adalora.target_r=4"], "adalora.target_r (4) must not exceed adalora.init_r (3)"),
        (["train.early_stopping_patience=2"], "budget schedule runs to the last step"),
    ],
)
def test_a_schedule_that_cannot_move_is_refused_before_anything_is_written(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    result = run_cli("run", *RUN, *overrides, "--run-dir", str(run_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not run_dir.exists()
