import pytest
import torch

from lmforge.errors import UserError
from lmforge.models.classifier import load_classifier, load_saved_classifier, tiny_bert_tokenizer

LABELS = ["ABBR", "DESC", "ENTY"]


def test_minilm_loads_offline_with_a_fresh_head():
    model, tokenizer = load_classifier("minilm", LABELS, seed=0)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 + 3 * 384 + 3  # encoder + pooler, then the head
    assert model.config.id2label == {0: "ABBR", 1: "DESC", 2: "ENTY"}
    assert tokenizer("hello world")["input_ids"][0] == tokenizer.cls_token_id


def test_head_init_is_seeded():
    a, _ = load_classifier("tiny-bert", LABELS, seed=1)
    b, _ = load_classifier("tiny-bert", LABELS, seed=1)
    c, _ = load_classifier("tiny-bert", LABELS, seed=2)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_tiny_tokenizer_is_deterministic_and_small():
    tok = tiny_bert_tokenizer()
    assert tok.vocab_size == 1000
    assert tok.tokenize("a wonderfully bad movie") == tiny_bert_tokenizer().tokenize("a wonderfully bad movie")
    assert "[UNK]" not in tok.tokenize("a wonderfully bad movie")


def test_full_model_save_then_load_gives_identical_logits(tmp_path):
    model, tok = load_classifier("tiny-bert", LABELS, seed=3)
    model.eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_saved_classifier(tmp_path)
    inputs = tok(["what is a nebula ?", "who wrote hamlet ?"], padding=True, return_tensors="pt")
    assert loaded_tok(["what is a nebula ?"])["input_ids"] == tok(["what is a nebula ?"])["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded.eval()(**inputs).logits)


@pytest.mark.parametrize(
    "name, message",
    [
        ("minilmm", "not a builtin model"),
        ("./no/such/folder", "not a builtin model"),
        ("org/model", "HF_HUB_OFFLINE=1"),
    ],
)
def test_unknown_models_are_user_errors(name, message):
    with pytest.raises(UserError, match=message):
        load_classifier(name, LABELS)
