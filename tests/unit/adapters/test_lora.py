import torch

from lmforge.adapters.lora import (
    inject_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from lmforge.core.loop import count_parameters
from lmforge.models.classifier import load_classifier

LABELS = ["negative", "positive"]


def adapted(seed=0):
    model, tok = load_classifier("tiny-bert", LABELS, seed=seed, dropout=0.0)
    inject_lora(model, ["query", "value"], r=4, alpha=8, dropout=0.0, trainable_modules=["classifier"])
    with torch.no_grad():  # B starts at zero; give it values so the adapter matters
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.5)
    return model.eval(), tok


def batch(tok):
    return tok(["a good movie", "the worst film of the year , sadly"], padding=True, return_tensors="pt")


def test_only_adapters_and_head_train():
    model, _ = adapted()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("classifier.") for n in trainable)
    assert len(lora_layers(model)) == 4  # query and value in 2 layers
    assert count_parameters(model)[0] == 4 * (4 * 64 + 64 * 4) + (64 * 2 + 2)


def test_merged_equals_unmerged_and_unmerge_restores():
    model, tok = adapted()
    inputs = batch(tok)
    with torch.no_grad():
        before = model(**inputs).logits
        merge_lora(model)
        merged = model(**inputs).logits
        unmerge_lora(model)
        after = model(**inputs).logits
    assert torch.allclose(before, merged, atol=1e-5)
    assert torch.allclose(before, after, atol=1e-6)
    assert not torch.allclose(
        before, load_classifier("tiny-bert", LABELS, seed=0, dropout=0.0)[0].eval()(**inputs).logits
    )


def test_remove_lora_gives_a_plain_model_with_the_same_outputs():
    model, tok = adapted()
    inputs = batch(tok)
    with torch.no_grad():
        before = model(**inputs).logits
        plain = remove_lora(model)
        assert not lora_layers(plain)
        assert torch.allclose(before, plain(**inputs).logits, atol=1e-5)


def test_save_then_load_gives_identical_logits(tmp_path):
    model, tok = adapted()
    save_adapter(model, tmp_path, 4, 8, 0.0, ["query", "value"], ["classifier"], "tiny-bert")
    fresh, _ = load_classifier("tiny-bert", LABELS, seed=0, dropout=0.0)
    loaded = load_adapter(fresh, tmp_path).eval()
    inputs = batch(tok)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_peft_loads_our_adapter_with_identical_logits(tmp_path):
    from peft import PeftModel

    model, tok = adapted()
    save_adapter(model, tmp_path, 4, 8, 0.0, ["query", "value"], ["classifier"], "tiny-bert")
    base, _ = load_classifier("tiny-bert", LABELS, seed=0, dropout=0.0)
    torch.nn.init.normal_(base.classifier.weight)  # a different head: the adapter's copy must replace it
    peft_model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    inputs = batch(tok)
    with torch.no_grad():
        ours, theirs = model(**inputs).logits, peft_model(**inputs).logits
    assert torch.allclose(ours, theirs, atol=1e-6), (ours - theirs).abs().max()


def test_names_that_match_nothing_are_user_errors():
    import pytest

    from lmforge.errors import UserError

    model, _ = load_classifier("tiny-bert", LABELS)
    with pytest.raises(UserError, match=r"match no linear layer \(layer names: .*query"):
        inject_lora(model, ["q_proj"], 4, 8, 0.0, ["classifier"])
    with pytest.raises(UserError, match="trainable_modules: no module named 'score'"):
        inject_lora(load_classifier("tiny-bert", LABELS)[0], ["query"], 4, 8, 0.0, ["score"])


GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]  # GPT-2's Conv1D layers: weight stored (in, out)


def adapted_gpt2(seed=0):
    from lmforge.models.causal_lm import set_dropout, tiny_gpt2

    model, tok = tiny_gpt2(seed)
    set_dropout(model, 0.0)
    inject_lora(model, GPT2_TARGETS, r=4, alpha=8, dropout=0.0, trainable_modules=[])
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.5)
    return model.eval(), tok


def test_lora_on_gpt2_conv1d_merges_saves_and_loads_in_peft_format(tmp_path):
    from peft import PeftModel
    from transformers.pytorch_utils import Conv1D

    from lmforge.models.causal_lm import tiny_gpt2

    model, tok = adapted_gpt2()
    assert len(lora_layers(model)) == 8  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj in 2 layers
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }
    inputs = tok(["the movie was a gorgeous mess\n", "what is 2 + 3 ?"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits
        assert not torch.allclose(before, tiny_gpt2(0)[0].eval()(**inputs).logits, atol=1e-3)
        save_adapter(model, tmp_path, 4, 8, 0.0, GPT2_TARGETS, [], "tiny-gpt2", task_type="CAUSAL_LM")
        loaded = load_adapter(tiny_gpt2(0)[0], tmp_path).eval()
        assert torch.equal(before, loaded(**inputs).logits)
        peft_model = PeftModel.from_pretrained(tiny_gpt2(0)[0], str(tmp_path)).eval()
        assert torch.allclose(before, peft_model(**inputs).logits, atol=1e-5)
        plain = remove_lora(model)
        assert not lora_layers(plain) and isinstance(plain.transformer.h[0].attn.c_attn, Conv1D)
        assert torch.allclose(before, plain(**inputs).logits, atol=1e-5)
