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
from lmforge.core.models import load_classifier

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
