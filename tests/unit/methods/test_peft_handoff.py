"""A LoRA or AdaLoRA run's final/ loads in peft alone (`AutoPeftModelForSequenceClassification.from_pretrained`,
docs/lora.md, "Load a run with peft") with the run's labels and the logits lmforge's own loader gives, whatever
seed torch has when peft builds the base: the head travels in the adapter (peft's `modules_to_save`) and the
base (final/base/) holds the frozen weights and the labelled config. Real tiny-bert runs, through the CLI in
process; a 6-label task, so a base built with the default 2 labels could not take the saved head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli.main import main
from lmforge.registry import load_finished_run

TEXTS = ["what is the capital of france ?", "who wrote the book ?", "a gorgeous film"]
TINY = ["model.name=tiny-bert", "train.batch_size=8", "data.max_train_examples=48", "data.max_eval_examples=16"]
RUNS = {
    "lora": ["lora/minilm_trec6", *TINY, "train.max_steps=3", "train.eval_every=100"],
    "adalora": [  # a 6-step budget schedule, so the saved ranks differ from init_r
        "adalora/minilm_trec6", *TINY, "train.max_steps=6", "train.eval_every=100",
        "adalora.tinit=1", "adalora.tfinal=2", "adalora.deltaT=1",
    ],
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(RUNS))
def finished_run(request, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / request.param
    assert main(["run", *RUNS[request.param], "--run-dir", str(run_dir)]) == 0
    return run_dir


def lmforge_logits(run_dir: Path) -> tuple[list[str], torch.Tensor]:
    _, labels, model, tokenizer = load_finished_run(run_dir)
    with torch.no_grad():
        return labels, model.cpu()(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def peft_logits(final: Path, seed: int):
    """The five lines of docs/lora.md, with torch seeded as the run never was."""
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(final)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    with torch.no_grad():
        return model, model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


@pytest.mark.slow  # two in-process tiny-bert training runs (the module's fixture): about 10 s
def test_peft_loads_the_run_with_its_labels_and_lmforges_logits(finished_run):
    labels, ours = lmforge_logits(finished_run)
    model, theirs = peft_logits(finished_run / "final", seed=1234)  # the run's seed is 42
    assert ours.shape == (len(TEXTS), 6)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    config = json.loads((finished_run / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((finished_run / "final" / "base").resolve())
    if finished_run.name == "adalora":  # peft's AdaLoRA, at the ranks the allocator left
        from peft import AdaLoraConfig

        assert isinstance(model.peft_config["default"], AdaLoraConfig)
        ranks = json.loads((finished_run / "adalora.json").read_text())["final_ranks"]
        loaded = {n: p.shape[0] for n, p in model.named_parameters() if n.endswith(".lora_E.default")}
        assert sorted(loaded.values()) == sorted(ranks.values()) and set(ranks.values()) != {12}


@pytest.mark.slow  # the same runs
def test_the_base_alone_has_a_random_head(finished_run):
    """The control: final/base/ holds no head, so the base peft builds gets a fresh one from torch's seed, and the
    test above passes only because the adapter's saved head replaces it (peft refuses an adapter without it:
    SEQ_CLS always wraps `classifier`)."""
    from transformers import AutoModelForSequenceClassification

    heads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForSequenceClassification.from_pretrained(str(finished_run / "final" / "base"))
        heads.append(base.classifier.weight.detach().clone())
    assert heads[0].shape == (6, 64) and not torch.equal(heads[0], heads[1])
    assert not any(".classifier." in key for key in load_file(finished_run / "final" / "base" / "model.safetensors"))


SIX = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def adapted_from_folder(source: Path):
    """A 6-label classifier loaded from the local model folder `source`, with LoRA on query and value."""
    from lmforge.adapters.lora import inject_lora
    from lmforge.models.classifier import load_classifier, tiny_bert_tokenizer

    tiny_bert_tokenizer().save_pretrained(source)
    model, _ = load_classifier(str(source), SIX, seed=0)
    inject_lora(model, ["query", "value"], 2, 4, 0.0, ["classifier"])
    return model


def test_a_base_folder_without_a_head_is_hard_linked_not_copied(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lmforge.models.classifier import load_encoder, save_peft_base

    load_encoder("tiny-bert")[0].save_pretrained(tmp_path / "encoder")  # a bare encoder, as MiniLM's package
    save_peft_base(
        adapted_from_folder(tmp_path / "encoder"), str(tmp_path / "encoder"), tmp_path / "base", ["classifier"]
    )
    assert (tmp_path / "base" / "model.safetensors").samefile(tmp_path / "encoder" / "model.safetensors")
    base = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "base"))
    assert base.config.num_labels == 6 and base.config.id2label[5] == "NUM"


def test_a_base_folder_with_a_head_of_its_own_is_written_without_it(tmp_path):
    """A fine-tuned 2-label model as the base of a 6-label run: linking its file would hand peft a head that
    does not fit, so the frozen tensors are written from memory, the adapted layers' under their own names."""
    from transformers import AutoModelForSequenceClassification

    from lmforge.models.classifier import load_classifier, save_peft_base

    load_classifier("tiny-bert", ["no", "yes"], seed=3)[0].save_pretrained(tmp_path / "tuned")
    model = adapted_from_folder(tmp_path / "tuned")
    save_peft_base(model, str(tmp_path / "tuned"), tmp_path / "base", ["classifier"])
    written = load_file(tmp_path / "base" / "model.safetensors")
    assert not (tmp_path / "base" / "model.safetensors").samefile(tmp_path / "tuned" / "model.safetensors")
    assert not any(key.startswith("classifier.") or "lora_" in key or ".base." in key for key in written)
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(written[query], model.get_submodule(query.removesuffix(".weight")).base.weight)
    assert AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "base")).config.num_labels == 6
