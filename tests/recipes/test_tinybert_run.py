"""TinyBERT end to end through the CLI on tiny models: a teacher run, general distillation on the
bundled corpus, task distillation from it with augmentation, LoRA and AdaLoRA teachers, exact
resume, and bad inputs."""

import json
import re
import signal

import pytest
from conftest import run_cli, start_cli, wait_for_checkpoint

# Every test here runs the CLI in a fresh process (seconds each, more on a loaded machine):
# `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

STUDENT = [
    "tinybert.student.layers=1",
    "tinybert.student.hidden=32",
    "tinybert.student.heads=2",
    "tinybert.student.intermediate=64",
]
GENERAL = [
    "tinybert/general_minilm",
    "model.name=tiny-bert",
    "tinybert.teacher=tiny-bert",
    "train.max_steps=6",
    "train.batch_size=8",
    "train.eval_every=3",
    "tinybert.held_out=16",
    *STUDENT,
]
TASK = [
    "tinybert/minilm_sst2",
    "train.max_steps=10",
    "train.batch_size=8",
    "train.eval_every=5",
    "train.log_every=1",
    "data.max_train_examples=48",
    "data.max_eval_examples=32",
    "tinybert.augment_copies=2",
]


def read(run_dir, name):
    text = (run_dir / name).read_text()
    return [json.loads(line) for line in text.splitlines()] if name.endswith(".jsonl") else json.loads(text)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinybert")
    teacher, general = root / "teacher", root / "general"
    result = run_cli(
        "run",
        "finetune/minilm_sst2",
        "model.name=tiny-bert",
        "train.max_steps=20",
        "train.batch_size=8",
        "data.max_train_examples=160",
        "data.max_eval_examples=32",
        "--run-dir",
        str(teacher),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("run", *GENERAL, "--run-dir", str(general))
    assert result.returncode == 0, result.stderr[-2000:]
    return {"teacher": teacher, "general": general, "root": root}


def task_args(runs, *extra):
    return [*TASK, f"tinybert.teacher={runs['teacher']}", f"tinybert.init_from={runs['general']}", *extra]


def test_general_stage_writes_a_student_and_its_losses(runs):
    general = runs["general"]
    final = read(general, "final.json")
    assert final["steps"] == 6 and final["layer_map"] == [2] and final["metrics"]["held_out_loss"] > 0
    assert (general / "final" / "projections.safetensors").is_file()
    train = [r for r in read(general, "metrics.jsonl") if r["split"] == "train"]
    assert {"embedding", "attention/1", "hidden/1"} <= set(train[-1])
    assert "TinyBERT: distillation losses per layer" in (general / "report.html").read_text()


def test_task_stage_distils_from_the_general_student(runs, tmp_path):
    run_dir = tmp_path / "task"
    result = run_cli("run", *task_args(runs), "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    made = re.search(r"48 examples x 2 copies -> (\d+) \((\d+) duplicate", result.stderr)
    assert (made and int(made[1]) + int(made[2]) == 144) or "from the cache" in result.stderr
    records = read(run_dir, "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert "attention/1" in train[0] and "prediction" not in train[0]  # intermediate layers first (8 steps)
    assert "prediction" in train[-1] and "attention/1" not in train[-1]  # then the prediction layer (2 steps)
    summary = read(run_dir, "tinybert.json")
    assert 0.0 <= summary["agreement"] <= 1.0 and summary["n_examples"] == 32
    assert summary["student_parameters"] < summary["teacher_parameters"]
    html = (run_dir / "report.html").read_text()
    assert "teacher-student agreement" in html and "prediction loss" in html
    result = run_cli("eval", str(run_dir), "--data", "sst2:dev")  # final/ is a plain classifier
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_prediction_phase_starts_with_a_fresh_adamw_state(runs, tmp_path):
    from lmforge.core.checkpoint import TRAINING_STATE, load_state

    # 10 steps: 8 intermediate, then prediction; the checkpoint after step 9 holds one AdamW step
    run_dir = tmp_path / "task"
    args = task_args(runs, "tinybert.augment=false", "train.save_every=9", "train.keep_checkpoints=5")
    assert run_cli("run", *args, "--run-dir", str(run_dir)).returncode == 0
    optimizer = load_state(run_dir / "checkpoints" / "step-00000009", TRAINING_STATE)["optimizer"]
    steps = {int(state["step"]) for state in optimizer["state"].values()}
    assert steps == {1}, steps  # the official code runs the phases as two trainings (new optimizer)


def test_task_stage_resumes_exactly_after_kill_9(runs, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    args = task_args(runs, "tinybert.augment=false", "train.max_steps=30", "train.save_every=5")
    assert run_cli("run", *args, "--run-dir", str(reference)).returncode == 0
    process = start_cli("run", *args, "--run-dir", str(killed))
    wait_for_checkpoint(killed, 15, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final.json").exists(), "the kill came too late to test anything"
    result = run_cli("run", "tinybert/minilm_sst2", "--resume", "--run-dir", str(killed))
    assert result.returncode == 0, result.stderr[-2000:]
    assert read(killed, "metrics.jsonl") == read(reference, "metrics.jsonl")


TEACHER_RUN = [
    "model.name=tiny-bert",
    "train.max_steps=12",
    "train.batch_size=8",
    "data.max_train_examples=96",
    "data.max_eval_examples=32",
]


@pytest.mark.parametrize(
    "recipe, adapter",
    [
        ("lora/minilm_sst2", ["lora.r=2"]),
        (
            "adalora/minilm_sst2",
            ["adalora.init_r=3", "adalora.target_r=1", "adalora.tinit=2", "adalora.tfinal=4", "adalora.deltaT=2"],
        ),
    ],
)
def test_an_adapter_run_teaches_with_its_adapters_merged(runs, tmp_path, recipe, adapter):
    teacher, run_dir = tmp_path / "teacher", tmp_path / "task"
    result = run_cli("run", recipe, *TEACHER_RUN, *adapter, "--run-dir", str(teacher))
    assert result.returncode == 0, result.stderr[-2000:]
    args = [*task_args(runs, "tinybert.augment=false", "train.max_steps=4"), f"tinybert.teacher={teacher}"]
    result = run_cli("run", *args, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    # the merged teacher predicts what the adapter run itself measured on the same 32 sentences
    assert read(run_dir, "tinybert.json")["teacher_accuracy"] == read(teacher, "final.json")["metrics"]["accuracy"]


def test_a_teacher_without_bert_attention_is_refused_before_anything_is_written(runs, tmp_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    # DistilBERT names its projections q_lin / k_lin: a classifier the attention hooks cannot read
    base, teacher, run_dir = tmp_path / "distilbert", tmp_path / "teacher", tmp_path / "task"
    tokenizer = AutoTokenizer.from_pretrained(str(runs["teacher"] / "final"))
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    DistilBertForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    result = run_cli("run", "finetune/minilm_sst2", *TEACHER_RUN, f"model.name={base}", "--run-dir", str(teacher))
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("run", *task_args(runs, f"tinybert.teacher={teacher}"), "--run-dir", str(run_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "no BERT-style self-attention layers" in result.stderr.strip().splitlines()[-1]
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["tinybert.init_from=", "tinybert.student.heads=3", "tinybert.student.hidden=33"], "must equal the teacher"),
        (["tinybert.init_from=", *STUDENT, "tinybert.student.layers=3"], "multiple of the student's 3"),
        (["tinybert.teacher=nowhere"], "nowhere: not a run folder"),
        (["tinybert.init_from=nowhere"], "has no final/"),
    ],
)
def test_bad_tinybert_input_exits_2_and_writes_nothing(runs, tmp_path, extra, message):
    run_dir = tmp_path / "run"
    result = run_cli("run", *task_args(runs, *extra), "--run-dir", str(run_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr.strip().splitlines()[-1]
    assert not run_dir.exists()
