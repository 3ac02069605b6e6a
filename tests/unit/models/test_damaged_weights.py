"""A model folder, run or adapter whose safetensors file is cut short (a copy interrupted, a full disk):
one line naming the file, exit 2, before any work (issue 23 item 9). Used to be exit 1 with safetensors'
"incomplete metadata, file not fully covered", which names no file."""

import pytest

from lmforge.cli.main import main
from lmforge.errors import UserError


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    from lmforge.models.classifier import load_classifier

    folder = tmp_path_factory.mktemp("models") / "tiny-classifier"
    model, tokenizer = load_classifier("tiny-bert", ["neg", "pos"])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cut_in_half(folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def causal_folder(tmp_path_factory):
    from lmforge.models.causal_lm import load_causal_lm

    folder = tmp_path_factory.mktemp("models") / "tiny-lm"
    model, tokenizer = load_causal_lm("tiny-gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cut_in_half(folder / "model.safetensors")
    return folder


def expected(folder) -> str:
    return f"{folder / 'model.safetensors'}: not a readable safetensors file, damaged or cut short"


def test_the_loaders_name_the_file(classifier_folder):
    from lmforge.models.classifier import load_classifier, load_encoder, load_saved_classifier

    for load in (
        lambda: load_classifier(str(classifier_folder), ["a", "b"]),
        lambda: load_encoder(str(classifier_folder)),
        lambda: load_saved_classifier(classifier_folder),
    ):
        with pytest.raises(UserError, match=expected(classifier_folder)):
            load()


def test_training_on_a_cut_model_folder_exits_2_and_makes_no_run(capsys, tmp_path, classifier_folder):
    run_dir = tmp_path / "run"
    argv = ["run", "finetune/minilm_sst2", f"model.name={classifier_folder}", "data.max_train_examples=8"]
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmforge: error: " + expected(classifier_folder)), err
    assert not run_dir.exists()


@pytest.mark.parametrize("command", ["eval-gen", "explain"])
def test_generation_commands_on_a_cut_causal_lm_exit_2(capsys, tmp_path, causal_folder, command):
    if command == "eval-gen":
        argv = [command, str(causal_folder), "--task", "gsm8k", "--limit", "1", "--out", str(tmp_path / "out")]
    else:
        argv = [command, str(causal_folder), "The capital of France is", "--html", str(tmp_path / "x.html")]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lmforge: error")]
    assert len(err) == 1 and err[0].startswith("lmforge: error: " + expected(causal_folder)), err
    assert list(tmp_path.iterdir()) == []


def test_a_cut_or_missing_adapter_file_is_named(tmp_path):
    import torch

    from lmforge.adapters.lora import load_peft_tensors

    folder = tmp_path / "final"
    folder.mkdir()
    with pytest.raises(UserError, match=f"{folder / 'adapter_model.safetensors'}: missing"):
        load_peft_tensors(torch.nn.Linear(2, 2), folder)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(64, 64)}, str(folder / "adapter_model.safetensors"))
    cut_in_half(folder / "adapter_model.safetensors")
    with pytest.raises(UserError, match="adapter_model.safetensors: not a readable safetensors file, damaged or cut"):
        load_peft_tensors(torch.nn.Linear(2, 2), folder)
