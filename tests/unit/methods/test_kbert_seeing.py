"""K-BERT's inputs on a real transformers BertModel: visibility by perturbation, and equality without knowledge."""

import pytest
import torch
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask

from lmforge.methods.kbert.graph import KnowledgeGraph, Triple
from lmforge.methods.kbert.tree import SentenceTreeBuilder
from lmforge.models.classifier import load_tokenizer

TEXTS = ["Tim Cook is visiting Beijing now", "Hello there, general Kenobi!", "a"]
GRAPH = KnowledgeGraph(
    "hand",
    (
        Triple("cook", "is ceo of", "apple"),
        Triple("beijing", "is the capital of", "china"),
        Triple("beijing", "is a", "city"),
    ),
)
APPLE = 6  # "[CLS] tim cook is ceo of apple ...": the last token of cook's branch
CHINA = 17  # the last token of beijing's second branch


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def tiny_bert(tokenizer, attn="eager", layers=2, hidden=32):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=64, attn_implementation=attn,
    )  # fmt: skip
    return BertModel(config).eval()


def run(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state  # (B, L, H)


def perturbed(batch, row, column, token_id):
    changed = {key: value.clone() for key, value in batch.items()}
    changed["input_ids"][row, column] = token_id
    return changed


def reachable(visible: torch.Tensor, row: int, column: int, layers: int) -> torch.Tensor:
    """(B, L) bool: the tokens whose output after `layers` attention layers can depend on one input token."""
    reach = torch.zeros(visible.shape[:2], dtype=torch.bool)
    reach[row, column] = True
    for _ in range(layers):  # a token's layer output reads the tokens it sees (itself included)
        reach = reach | (visible.float() @ reach[..., None].float())[..., 0].bool()
    return reach


def test_transformers_uses_a_4d_mask_as_given(tokenizer):
    # transformers 5.x (masking_utils._preprocess_mask_arguments): a 4-D mask is returned unchanged, for
    # eager and sdpa alike; eager adds it to the scaled scores, sdpa passes it as attn_mask.
    mask = SentenceTreeBuilder(tokenizer, GRAPH).encode(TEXTS)["attention_mask"]
    for attn in ("eager", "sdpa"):
        config = BertConfig(attn_implementation=attn)
        embeds = torch.zeros(*mask.shape[::2], config.hidden_size)  # (B, L, H)
        assert create_bidirectional_mask(config=config, inputs_embeds=embeds, attention_mask=mask) is mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_0_1_float_mask_hides_nothing(tokenizer, attn):
    # The pitfall the additive mask avoids: a 0/1 mask is accepted and silently wrong (1 and 0 are both
    # finite biases); so is a bool mask under eager attention (added as 1.0 / 0.0).
    model = tiny_bert(tokenizer, attn, layers=1)
    batch = SentenceTreeBuilder(tokenizer, GRAPH).encode(TEXTS)
    x = tokenizer.convert_tokens_to_ids("x")
    assert torch.equal(run(model, batch)[0, 1], run(model, perturbed(batch, 0, CHINA, x))[0, 1])  # "tim" ignores it
    visible = batch["attention_mask"] == 0  # (B, 1, L, L)
    masks = [visible.float()] + ([visible] if attn == "eager" else [])
    for mask in masks:
        wrong = {**batch, "attention_mask": mask}
        assert not torch.equal(run(model, wrong)[0, 1], run(model, perturbed(wrong, 0, CHINA, x))[0, 1])
    if attn == "sdpa":  # sdpa reads a bool mask as True = visible
        assert torch.equal(run(model, {**batch, "attention_mask": visible}), run(model, batch))


def test_position_ids_reach_the_position_embeddings(tokenizer):
    model = tiny_bert(tokenizer)
    batch = SentenceTreeBuilder(tokenizer, GRAPH).encode(TEXTS)
    emb = model.embeddings
    expected = emb.LayerNorm(
        emb.word_embeddings(batch["input_ids"])
        + emb.position_embeddings(batch["position_ids"])
        + emb.token_type_embeddings(batch["token_type_ids"])
    )
    with torch.no_grad():
        got = emb(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], token_type_ids=batch["token_type_ids"]
        )
    assert torch.allclose(got, expected, atol=1e-6)
    hard = {**batch, "position_ids": torch.arange(20).repeat(3, 1)}
    assert not torch.equal(run(model, batch)[0, 7], run(model, hard)[0, 7])  # soft position 3, hard 7
    assert torch.equal(run(model, {k: v for k, v in hard.items() if k != "position_ids"}), run(model, hard))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("column", [APPLE, CHINA])
def test_a_branch_token_changes_only_the_tokens_that_can_see_it(tokenizer, attn, layers, column):
    model = tiny_bert(tokenizer, attn, layers)
    batch = SentenceTreeBuilder(tokenizer, GRAPH).encode(TEXTS)
    before = run(model, batch)
    after = run(model, perturbed(batch, 0, column, tokenizer.convert_tokens_to_ids("banana")))
    reach = reachable(batch["attention_mask"][:, 0] == 0, 0, column, layers)  # (B, L)
    unchanged = (before == after).all(-1)  # (B, L), bit for bit
    assert torch.equal(unchanged, ~reach)
    # Through one layer only the branch itself and its entity see the token; through two, the trunk too
    # (via the entity), but never another entity's branches.
    anchor = 2 if column == APPLE else 9
    assert reach[0, anchor] and not reach[0, 1 if layers == 1 else 10 if column == APPLE else 3]
    assert not reach[1:].any()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_without_the_visible_matrix_knowledge_reaches_every_token(tokenizer, attn):
    model = tiny_bert(tokenizer, attn, layers=1)
    batch = SentenceTreeBuilder(tokenizer, GRAPH).encode(TEXTS, visible_matrix=False)
    before = run(model, batch)
    after = run(model, perturbed(batch, 0, CHINA, tokenizer.convert_tokens_to_ids("banana")))
    assert (before[0] != after[0]).any(-1).all()  # knowledge noise: "tim" is changed by "china"
    assert torch.equal(before[1:], after[1:])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_with_an_empty_graph_the_outputs_are_the_plain_models(tokenizer, attn):
    model = tiny_bert(tokenizer, attn, hidden=64)
    builder = SentenceTreeBuilder(tokenizer, KnowledgeGraph("empty", ()))
    for texts in (TEXTS, TEXTS[:1]):  # with padding, and without (where transformers uses no mask at all)
        ours = builder.encode(texts)
        plain = tokenizer(texts, padding=True, return_tensors="pt")
        assert torch.equal(ours["input_ids"], plain["input_ids"])
        assert torch.equal(ours["token_type_ids"], plain["token_type_ids"])
        assert torch.equal(ours["position_ids"], torch.arange(ours["input_ids"].shape[1]).expand_as(ours["input_ids"]))
        assert torch.equal(run(model, ours), run(model, plain))  # padding rows included, bit for bit
