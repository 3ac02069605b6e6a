"""The CLI as a user meets it: list, eval, predict, report, and one clear line for every bad input."""

import json

import pytest

# Every test here runs the CLI in a fresh process (seconds each, more on a loaded machine):
# `make test` runs them, `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

TINY = [
    "model.name=tiny-bert",
    "train.max_steps=4",
    "train.batch_size=8",
    "data.max_train_examples=40",
    "data.max_eval_examples=16",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import run_cli

    run_dir = tmp_path_factory.mktemp("runs") / "lora"
    result = run_cli("run", "lora/minilm_sst2", *TINY, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir / "stderr.log").write_text(result.stderr)
    return run_dir


def test_a_log_gets_plain_progress_lines_and_the_version_is_printed(cli, finished_run):
    # the module's run wrote its stderr to a pipe, as nohup, CI and SLURM do: no carriage-return redraws
    log = (finished_run / "stderr.log").read_text()
    assert "\r" not in log and "train: 4/4 step (100%)" in log
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("lmforge 0.")


def test_list_shows_datasets_with_sizes_and_licenses(cli):
    result = cli("list", "datasets")
    assert result.returncode == 0
    for name in ("sst2", "trec6", "trec50", "agnews"):
        assert name in result.stdout
    assert "license:" in result.stdout and "MB" in result.stdout and "train 6,920" in result.stdout


def test_list_methods_shows_every_option(cli):
    out = cli("list", "methods").stdout
    for key in ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "train.lr", "train.save_every"):
        assert key in out


def test_eval_on_a_builtin_split_and_a_user_file(cli, finished_run, tmp_path):
    result = cli("eval", str(finished_run), "--data", "sst2:dev")
    assert result.returncode == 0, result.stderr
    saved = json.loads((finished_run / "eval" / "sst2-dev.json").read_text())
    assert saved["n_examples"] == 872 and f"{saved['metrics']['accuracy']:.4f}" in result.stdout

    path = tmp_path / "mine.csv"
    path.write_text("review,sentiment\nlovely film,positive\nawful,negative\n")
    result = cli(
        "eval", str(finished_run), "--data", str(path), "--text-column", "review", "--label-column", "sentiment"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((finished_run / "eval" / "mine.json").read_text())["n_examples"] == 2
    assert "mine" in (finished_run / "report.html").read_text()


def test_predict_prints_labels_with_probabilities(cli, finished_run, tmp_path):
    result = cli("predict", str(finished_run), "a gorgeous film", "dull and tedious", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a gorgeous film", "dull and tedious"]
    for r in rows:
        assert set(r["probabilities"]) == {"negative", "positive"}
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
    texts = tmp_path / "texts.txt"
    texts.write_text("one\n\ntwo\n")
    assert len(cli("predict", str(finished_run), "--file", str(texts)).stdout.splitlines()) == 2
    table = tmp_path / "texts.csv"
    table.write_text("id,review\n1,great\n2,boring\n3,fine\n")
    result = cli("predict", str(finished_run), "--file", str(table), "--text-column", "review")
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[-1] for line in result.stdout.splitlines()] == ["great", "boring", "fine"]


def test_report_is_rebuilt(cli, finished_run):
    (finished_run / "report.html").unlink()
    result = cli("report", str(finished_run))
    assert result.returncode == 0 and (finished_run / "report.html").exists()


def one_clear_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lr=-1e-3"], "train.lr: expected a value > 0"),
        (["train.learning_rate=1e-3"], "unknown key 'train.learning_rate'"),
        (["model.name=no-such-model"], "model 'no-such-model': not a builtin model"),
        (["data.train=missing.jsonl"], "missing.jsonl: file not found"),
    ],
)
def test_bad_run_input_exits_2_and_writes_nothing(cli, tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    line = one_clear_line(cli("run", "finetune/minilm_sst2", *TINY, *overrides, "--run-dir", str(run_dir)))
    assert message in line
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "train_file, eval_file, message",
    [
        ("", None, "the file is empty"),
        ("text,label\nnice,pos\n", None, "no column 'sentence'"),
        (b"sentence,label\nnice,pos\ncaf\xe9,neg\n", None, "byte 0xe9 at column 4 is not UTF-8"),
        ("sentence,label\nnice,pos\nbad,neg\n", "sentence,label\nok,pos\nmeh,neutral\n", "label 'neutral'"),
        ("sentence,label,sentence\nnice,1,x\n", None, "train.csv:1: column 'sentence' appears twice in the header"),
        ("sentence,label\nnice,1\nbad,0\nok,1.0\n", None, "labels '1' (line 2) and '1.0' (line 4) are one number"),
        ("sentence,label\nnice,1\n" + "x" * 131_073 + ",0\n", None, "train.csv:3: unreadable csv row: field larger"),
    ],
)
def test_bad_data_files(cli, tmp_path, train_file, eval_file, message):
    train = tmp_path / "train.csv"
    train.write_bytes(train_file if isinstance(train_file, bytes) else train_file.encode())
    dev = tmp_path / "dev.csv"
    dev.write_text(eval_file or "sentence,label\nnice,pos\n")
    run_dir = tmp_path / "run"
    result = cli(
        "run",
        "finetune/minilm_sst2",
        *TINY,
        f"data.train={train}",
        f"data.eval={dev}",
        "data.text_column=sentence",
        "--run-dir",
        str(run_dir),
    )
    assert message in one_clear_line(result)
    assert str(train if eval_file is None else dev) in result.stderr
    assert not run_dir.exists()


def test_other_bad_usage(cli, tmp_path, finished_run):
    assert "unknown recipe 'lora/nope'" in one_clear_line(cli("run", "lora/nope"))
    usage = cli("list", "nothing")
    assert usage.returncode == 2 and "invalid choice: 'nothing'" in usage.stderr
    assert "not a run folder" in one_clear_line(cli("eval", str(tmp_path), "--data", "sst2:dev"))
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,positive\nweird,sarcastic\n")
    assert "label 'sarcastic', which training never saw" in one_clear_line(
        cli("eval", str(finished_run), "--data", str(bad))
    )
    assert "already exists" in one_clear_line(cli("run", "lora/minilm_sst2", *TINY, "--run-dir", str(finished_run)))


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_saved_model_reloads_with_identical_predictions(cli, tmp_path, method):
    """final.json is computed in memory at the end of training; `lmforge eval` reloads final/ from disk."""
    from lmforge.data.files import load_examples

    run_dir = tmp_path / "run"
    assert cli("run", f"{method}/minilm_sst2", *TINY, "--run-dir", str(run_dir)).returncode == 0
    dev = load_examples("sst2:dev").head(16)
    path = tmp_path / "dev16.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(dev.texts, dev.labels)))
    result = cli("eval", str(run_dir), "--data", str(path))
    assert result.returncode == 0, result.stderr
    in_memory = json.loads((run_dir / "final.json").read_text())
    reloaded = json.loads((run_dir / "eval" / "dev16.json").read_text())
    assert reloaded["confusion"] == in_memory["confusion"]
    assert reloaded["metrics"]["loss"] == pytest.approx(in_memory["metrics"]["loss"], abs=1e-6)


def test_early_stopping_restores_the_best_model(cli, tmp_path):
    run_dir = tmp_path / "run"
    # A learning rate this small cannot improve accuracy: training must stop after `patience` evaluations.
    result = cli(
        "run",
        "finetune/minilm_sst2",
        *TINY,
        "train.max_steps=40",
        "train.lr=1e-12",
        "train.eval_every=2",
        "train.early_stopping_patience=2",
        "--run-dir",
        str(run_dir),
    )
    assert result.returncode == 0, result.stderr
    final = json.loads((run_dir / "final.json").read_text())
    assert final["steps"] == 6 and final["best_step"] == 2
    assert "early stop at step 6" in result.stderr and "restored the best model (step 2" in result.stderr


def test_a_local_model_folder_is_a_model(cli, tmp_path):
    """A finished full fine-tuning run's final/ is a Hugging Face folder: train on it again, with a new label set."""
    first, second = tmp_path / "sst2", tmp_path / "trec6"
    assert cli("run", "finetune/minilm_sst2", *TINY, "--run-dir", str(first)).returncode == 0
    result = cli("run", "finetune/minilm_trec6", *TINY, f"model.name={first / 'final'}", "--run-dir", str(second))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((second / "final.json").read_text())["labels"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def test_export_merge_gives_a_plain_model_with_the_same_predictions(cli, finished_run, tmp_path):
    import torch

    from lmforge.cli.main import load_finished_run
    from lmforge.models.classifier import load_saved_classifier

    out = tmp_path / "merged"
    result = cli("export", str(finished_run), "--merge", str(out))
    assert result.returncode == 0, result.stderr
    merged, tokenizer = load_saved_classifier(out)
    _, _, adapted, _ = load_finished_run(finished_run)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    batch = tokenizer(["a gorgeous film", "dull and tedious"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**batch).logits, adapted(**batch).logits, atol=1e-5)
    assert "already exists" in one_clear_line(cli("export", str(finished_run), "--merge", str(out)))
    line = one_clear_line(cli("export", str(finished_run), str(tmp_path / "plain")))
    assert "its final/ is a LoRA adapter; add --merge" in line and not (tmp_path / "plain").exists()


def test_export_of_a_fully_fine_tuned_run_needs_no_merge(cli, tmp_path):
    import torch

    from lmforge.models.classifier import load_saved_classifier

    run_dir = tmp_path / "finetune"
    assert cli("run", "finetune/minilm_sst2", *TINY, "--run-dir", str(run_dir)).returncode == 0
    result = cli("export", str(run_dir), str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr
    exported, tokenizer = load_saved_classifier(tmp_path / "model")
    trained, _ = load_saved_classifier(run_dir / "final")
    batch = tokenizer(["a gorgeous film"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(exported.eval()(**batch).logits, trained.eval()(**batch).logits)
    assert "give the output folder once" in one_clear_line(cli("export", str(run_dir)))


def test_manifest_names_the_recipe_that_resume_must_name_again(cli, finished_run):
    assert json.loads((finished_run / "manifest.json").read_text())["recipe"] == "lora/minilm_sst2"
    line = one_clear_line(cli("run", "lora/minilm_trec6", "--resume", "--run-dir", str(finished_run)))
    assert f"{finished_run}: made with recipe lora/minilm_sst2, not lora/minilm_trec6" in line


def test_labels_that_isdigit_takes_for_digits_train(cli, tmp_path):
    """ "²" passes str.isdigit() but not int(): sorting the labels as numbers used to crash (exit 1)."""
    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"text {i},{'²' if i % 2 else '1'}\n" for i in range(16)))
    run_dir = tmp_path / "run"
    result = cli(
        "run",
        "finetune/minilm_sst2",
        *TINY,
        f"data.train={data}",
        f"data.eval={data}",
        "data.text_column=sentence",
        "--run-dir",
        str(run_dir),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run_dir / "final.json").read_text())["labels"] == ["1", "²"]


def cache_model(cache, repo_id):
    """A tiny classifier saved into a Hugging Face cache under `repo_id`, laid out as the hub client
    writes it (models--org--name/refs/main -> snapshots/<commit>/)."""
    from lmforge.models.classifier import load_classifier

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    model, tokenizer = load_classifier("tiny-bert", ["negative", "positive"], seed=0)
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("repo_id", ["tiny-org/tiny-bert-sst2", "tiny-bert-sst2"])
def test_a_hub_id_in_the_cache_loads_offline(cli, tmp_path, monkeypatch, repo_id):
    cache = tmp_path / "hub"
    cache_model(cache, repo_id)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    run_dir = tmp_path / "run"
    result = cli("run", "finetune/minilm_sst2", *TINY, f"model.name={repo_id}", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    line = one_clear_line(cli("run", "finetune/minilm_sst2", *TINY, "model.name=tiny-org/not-cached"))
    assert "not-cached" in line and str(cache) in line and "HF_HUB_OFFLINE=1" in line
