import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.errors import UserError
from lmforge.methods.kbert.graph import KnowledgeGraph, Triple, load_graph, relation_words
from lmforge.methods.kbert.tree import (
    Mention,
    SentenceTreeBuilder,
    additive_mask,
    collate,
    find_mentions,
    lemma,
    sentences_per_second,
)
from lmforge.models.classifier import load_tokenizer

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def graph_of(*triples):
    return KnowledgeGraph("hand", tuple(Triple(h, relation_words(r), t, rank) for h, r, t, rank in triples))


# Figure 2 of the paper, in English: "Tim Cook is visiting Beijing now".
PAPER_GRAPH = [("cook", "is ceo of", "apple", 99), ("beijing", "is the capital of", "china", 99),
               ("beijing", "is a", "city", 99)]  # fmt: skip


def visible_of(batch, row=0):
    """(L, L) 0/1 matrix read back from the additive mask: 1 where the mask is 0."""
    return (batch["attention_mask"][row, 0] == 0).int()


def matrix(rows: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in row.replace(" ", "")] for row in rows.strip().splitlines()])


def test_paper_example_soft_positions_and_visible_matrix(tokenizer):
    builder = SentenceTreeBuilder(tokenizer, graph_of(*PAPER_GRAPH))
    batch = builder.encode(["Tim Cook is visiting Beijing now"])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert tokens == ["[CLS]", "tim", "cook", "is", "ceo", "of", "apple", "is", "visiting", "beijing",
                      "is", "a", "city", "is", "the", "capital", "of", "china", "now", "[SEP]"]  # fmt: skip
    # Branches continue from their entity (cook = 2, beijing = 5); the trunk resumes: "is" = 3, "now" = 6.
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8, 6, 7, 8, 9, 10, 6, 7]
    # Trunk: 0 1 2 7 8 9 18 19. Branch "is ceo of apple": 3-6 on cook (2). Branches "is a city": 10-12
    # and "is the capital of china": 13-17 on beijing (9); the two branches of beijing do not see each other.
    expected = matrix("""
        111 0000 111 000 00000 11
        111 0000 111 000 00000 11
        111 1111 111 000 00000 11
        001 1111 000 000 00000 00
        001 1111 000 000 00000 00
        001 1111 000 000 00000 00
        001 1111 000 000 00000 00
        111 0000 111 000 00000 11
        111 0000 111 000 00000 11
        111 0000 111 111 11111 11
        000 0000 001 111 00000 00
        000 0000 001 111 00000 00
        000 0000 001 111 00000 00
        000 0000 001 000 11111 00
        000 0000 001 000 11111 00
        000 0000 001 000 11111 00
        000 0000 001 000 11111 00
        000 0000 001 000 11111 00
        111 0000 111 000 00000 11
        111 0000 111 000 00000 11
    """)
    assert torch.equal(visible_of(batch), expected)
    assert batch["attention_mask"].shape == (1, 1, 20, 20) and batch["attention_mask"].dtype == torch.float32
    assert set(batch["attention_mask"].unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    assert torch.equal(batch["token_type_ids"], torch.zeros(1, 20, dtype=torch.long))


def test_word_pieces_lemma_multiword_entity_choice_and_padding(tokenizer):
    graph = graph_of(
        ("kumquat", "AtLocation", "market", 12),  # ranked after IsA in the relation table: not chosen
        ("kumquat", "IsA", "citrus fruit", 0),
        ("river", "IsA", "stream", 0),
        ("river bank", "IsA", "slope", 0),  # longer than "river": wins
    )
    builder = SentenceTreeBuilder(tokenizer, graph, max_entities=1)
    batch = builder.encode(["Kumquats grow near the River Bank", "the end"])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert tokens == ["[CLS]", "ku", "##m", "##qua", "##ts", "is", "a", "citrus", "fruit", "grow", "near", "the",
                      "river", "bank", "is", "a", "slope", "[SEP]"]  # fmt: skip
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8, 9, 10, 11, 12, 10]
    # Entity "kumquats" = pieces 1-4 with branch 5-8; "river bank" = 12-13 with branch 14-16.
    expected = matrix("""
        1 1111 0000 11111 000 1
        1 1111 1111 11111 000 1
        1 1111 1111 11111 000 1
        1 1111 1111 11111 000 1
        1 1111 1111 11111 000 1
        0 1111 1111 00000 000 0
        0 1111 1111 00000 000 0
        0 1111 1111 00000 000 0
        0 1111 1111 00000 000 0
        1 1111 0000 11111 000 1
        1 1111 0000 11111 000 1
        1 1111 0000 11111 000 1
        1 1111 0000 11111 111 1
        1 1111 0000 11111 111 1
        0 0000 0000 00011 111 0
        0 0000 0000 00011 111 0
        0 0000 0000 00011 111 0
        1 1111 0000 11111 000 1
    """)
    assert torch.equal(visible_of(batch), expected)
    # The second sentence: 4 real tokens, padding hidden from everyone; padding rows see the real tokens
    # (as transformers' own padding mask), and padding keeps hard positions.
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][1, :4].tolist()) == ["[CLS]", "the", "end", "[SEP]"]
    assert torch.equal(visible_of(batch, 1), torch.tensor([[1] * 4 + [0] * 14] * 18))
    assert batch["position_ids"][1].tolist() == list(range(18))
    assert (batch["input_ids"][1, 4:] == tokenizer.pad_token_id).all()


def test_ablations_hard_positions_and_no_visible_matrix(tokenizer):
    builder = SentenceTreeBuilder(tokenizer, graph_of(*PAPER_GRAPH))
    texts = ["Tim Cook is visiting Beijing now", "hello"]
    soft = builder.encode(texts)
    hard = builder.encode(texts, soft_positions=False)
    noisy = builder.encode(texts, visible_matrix=False)
    assert torch.equal(hard["position_ids"], torch.arange(20).repeat(2, 1))
    assert torch.equal(hard["attention_mask"], soft["attention_mask"])
    assert torch.equal(noisy["position_ids"], soft["position_ids"])
    assert visible_of(noisy).all()  # knowledge noise: every token sees every token
    assert torch.equal(visible_of(noisy, 1), torch.tensor([[1] * 3 + [0] * 17] * 20))


def test_truncation_drops_whole_branches_last_first_then_cuts_the_trunk(tokenizer):
    graph = graph_of(("kumquat", "IsA", "citrus fruit", 0), ("river bank", "IsA", "slope", 0))
    text = ["Kumquats grow near the River Bank"]  # trunk 11 tokens; branches of 4 and 3 pieces: 18 in all

    def built(max_length):
        builder = SentenceTreeBuilder(tokenizer, graph, max_length=max_length)
        tree = builder.trees(text)[0]
        return tokenizer.convert_ids_to_tokens(tree.input_ids), tree

    tokens, tree = built(18)
    assert len(tokens) == 18 and tree.dropped_branches == 0
    tokens, tree = built(17)  # the last branch goes whole, never half of it
    assert "slope" not in tokens and "citrus" in tokens and len(tokens) == 15 and tree.dropped_branches == 1
    assert tree.mentions == [Mention(0, 1, ("is a citrus fruit",)), Mention(4, 6, ())]
    tokens, tree = built(12)
    assert tokens == ["[CLS]", "ku", "##m", "##qua", "##ts", "grow", "near", "the", "river", "bank", "[SEP]"]
    assert tree.branch_ids == [0] * 11 and tree.dropped_branches == 2
    tokens, tree = built(8)  # the trunk alone is too long: cut at the end, [SEP] kept
    assert tokens == ["[CLS]", "ku", "##m", "##qua", "##ts", "grow", "near", "[SEP]"]
    assert tree.soft_positions == list(range(8))


@pytest.mark.parametrize("max_length", [6, 9, 13, 20, 30])
def test_truncated_trees_stay_consistent(tokenizer, max_length):
    builder = SentenceTreeBuilder(tokenizer, load_graph("conceptnet"), max_length=max_length)
    for tree in builder.trees(["The dogs chased two cats into the old church near the bank.", "Pens write."]):
        n = len(tree.input_ids)
        assert n <= max_length and tree.input_ids[0] == tokenizer.cls_token_id
        assert tree.input_ids[-1] == tokenizer.sep_token_id
        for k in range(n):  # every branch token hangs on an entity present on the trunk, just before it
            if tree.branch_ids[k]:
                anchor = [j for j in range(k) if tree.branch_ids[j] == 0 and tree.mention_ids[j] == tree.mention_ids[k]]
                assert anchor and tree.soft_positions[k] > tree.soft_positions[anchor[-1]]


def test_find_mentions_longest_match_case_lemmas_and_stop_words():
    branches = {
        "new york": ("is a city",),
        "new york city": ("is a big city",),
        "berry": ("is a fruit",),
        "box": ("is a container",),
        "may": ("is a month",),
        "in": ("is a unit",),
        "pen": ("is used for write", "is found at desk", "is a tool"),
    }
    words = "We saw New York City and New York , berries , boxes , May in pens".split()
    assert find_mentions(words, branches, max_entities=2) == [
        Mention(2, 5, ("is a big city",)),
        Mention(6, 8, ("is a city",)),
        Mention(9, 10, ("is a fruit",)),
        Mention(11, 12, ("is a container",)),
        Mention(15, 16, ("is used for write", "is found at desk")),  # stop words "May", "in" never match
    ]
    assert [m.start for m in find_mentions(words, branches, lemmas=False)] == [2, 6]
    assert find_mentions(words, branches, max_entities=0)[0] == Mention(2, 5, ())


@pytest.mark.parametrize(
    "word, expected",
    [("dogs", "dog"), ("Berries", "berry"), ("boxes", "box"), ("churches", "church"), ("horses", "horse"),
     ("classes", "class"), ("dishes", "dish"), ("glass", "glass"), ("virus", "virus"), ("analysis", "analysis"),
     ("gas", "gas"), ("dog", "dog")],
)  # fmt: skip
def test_lemma(word, expected):
    assert lemma(word) == expected


def test_empty_texts_and_bad_settings(tokenizer):
    builder = SentenceTreeBuilder(tokenizer, KnowledgeGraph("empty", ()))
    tree = builder.trees([""])[0]
    assert tree.input_ids == [tokenizer.cls_token_id, tokenizer.sep_token_id] and tree.soft_positions == [0, 1]
    with pytest.raises(UserError, match="max_length"):
        SentenceTreeBuilder(tokenizer, KnowledgeGraph("empty", ()), max_length=1)


def test_additive_mask_dtype():
    visible = torch.tensor([[[True, False], [True, True]]])
    mask = additive_mask(visible, torch.bfloat16)
    assert mask.shape == (1, 1, 2, 2) and mask.dtype == torch.bfloat16
    assert mask[0, 0].tolist() == [[0.0, torch.finfo(torch.bfloat16).min], [0.0, 0.0]]


SENTENCES = [
    "The dogs chased two cats into the old church near the river bank.",
    "A kumquat is a small citrus fruit sold at the market.",
    "Pens and pencils are used to write letters at a desk.",
    "The doctor helped the patient in the hospital.",
]
FINGERPRINT = """
import hashlib, sys
from lmforge.models.classifier import load_tokenizer
from lmforge.methods.kbert.graph import load_graph
from lmforge.methods.kbert.tree import SentenceTreeBuilder
batch = SentenceTreeBuilder(load_tokenizer("minilm"), load_graph("conceptnet"), max_length=48).encode(
    sys.stdin.read().splitlines()
)
print(hashlib.sha256(b"".join(batch[key].numpy().tobytes() for key in sorted(batch))).hexdigest())
"""


def fingerprint(batch):
    return hashlib.sha256(b"".join(batch[key].numpy().tobytes() for key in sorted(batch))).hexdigest()


@pytest.mark.slow  # fresh Python processes, each loading the tokenizer and a graph (seconds)
def test_construction_is_identical_across_runs_and_processes(tokenizer):
    # The hash seed changes set iteration order; a construction that read a set in its order would differ.
    # ConceptNet (dog: 37 candidate branches) runs the same code as WordNet at a fraction of the start-up.
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    runs = [  # two processes at once, with different hash seeds
        subprocess.Popen(
            [sys.executable, "-c", FINGERPRINT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "PYTHONHASHSEED": seed},
            text=True,
        )
        for seed in ("1", "2")
    ]
    builder = SentenceTreeBuilder(tokenizer, load_graph("conceptnet"), max_length=48)
    first = fingerprint(builder.encode(SENTENCES))
    assert fingerprint(builder.encode(SENTENCES)) == first  # again, from the cached branch pieces
    assert max(builder.trees(SENTENCES)[0].branch_ids) == 5  # the test has branches to order
    digests = set()
    for process in runs:
        out, err = process.communicate("\n".join(SENTENCES), timeout=300)
        assert process.returncode == 0, err
        digests.add(out.strip())
    assert digests == {first}


def test_throughput(tokenizer):
    builder = SentenceTreeBuilder(tokenizer, load_graph("wordnet"))
    texts = [f"{s} Sentence number {i}." for i in range(50) for s in SENTENCES]  # 200 sentences
    trees = builder.trees(texts)
    rate = sentences_per_second(builder, texts, batch_size=32)
    branches = sum(max(t.branch_ids) for t in trees) / len(trees)
    print(
        f"\nK-BERT input construction (wordnet, max_length 128): {rate:.0f} sentences/s, {branches:.1f} branches each"
    )
    assert rate > 20  # loose: the machine may be busy; construction must not dominate a training step
    assert torch.equal(collate(trees[:4], 0)["input_ids"], builder.encode(texts[:4])["input_ids"])
