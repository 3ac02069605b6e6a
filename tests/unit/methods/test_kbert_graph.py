import re

import pytest

from lmforge.errors import UserError
from lmforge.methods.kbert.graph import (
    RELATION_WORDS,
    KnowledgeGraph,
    Triple,
    entity_words,
    load_graph,
    read_tsv_graph,
    relation_words,
    split_words,
)


def test_wordnet_builtin_sizes_and_rendering():
    graph = load_graph("wordnet")
    # 93,003 lines of WN18RR; rendering merges senses (`dog.n.01`, `dog.n.03` -> dog): 6,869 duplicates
    # and 5,809 triples whose tail renders as the head (`call.v.03 _verb_group call.v.09`) are dropped.
    assert len(graph.triples) == 80_325
    assert len(graph.entities) == 31_541
    assert len(graph.relations) == 11
    assert all(t.relation_rank < len(RELATION_WORDS) for t in graph.triples)  # every relation is in the table
    assert not any(re.search(r"\.[nvasr]\.\d\d$|_", t.head + t.tail) for t in graph.triples)
    assert Triple("land reform", "is a kind of", "reform") in graph.triples
    assert Triple("kamet", "is an instance of", "mountain peak") in graph.triples
    # Branches: relation-table order (hypernyms first), then alphabetical.
    assert graph.branches["dog"] == (
        "is a kind of canine",
        "is a kind of chap",
        "is a kind of domestic animal",
        "has part flag",
    )
    assert graph.branches["lake st . clair"][0] == "is an instance of lake"  # key in split words


def test_conceptnet_builtin_keeps_only_true_triples():
    graph = load_graph("conceptnet")
    # 2,400 lines with label 1 in the three CKBC files; one points at its own head.
    assert len(graph.triples) == 2_399
    assert len(graph.entities) == 2_400
    assert len(graph.relations) == 26
    assert all(t.relation_rank < len(RELATION_WORDS) for t in graph.triples)
    assert Triple("pen", "is used for", "write") in graph.triples
    assert Triple("dog", "can", "bark") in graph.triples
    # Corrupted negatives (label 0) of the same files are absent: count the lines by hand.
    from lmforge.data.builtin import DATA_DIR

    lines = [
        line.split("\t")
        for name in ("dev1", "dev2", "test")
        for line in (DATA_DIR / "conceptnet" / f"new_omcs_{name}.txt").read_text().splitlines()
    ]
    negatives = {(entity_words(h), relation_words(r), entity_words(t)) for r, h, t, label in lines if label == "0"}
    positives = {(entity_words(h), relation_words(r), entity_words(t)) for r, h, t, label in lines if label == "1"}
    kept = {(t.head, t.relation, t.tail) for t in graph.triples}
    assert kept <= positives and not (kept & (negatives - positives))
    assert graph.branches["dog"][:2] == ("is a animal", "is a canine")


def test_builtin_graphs_are_cached():
    assert load_graph("conceptnet") is load_graph("conceptnet")


@pytest.mark.parametrize(
    "name, words",
    [
        ("_hypernym", "is a kind of"),
        ("_instance_hypernym", "is an instance of"),
        ("_derivationally_related_form", "is a word form of"),
        ("_member_of_domain_region", "has the regional term"),
        ("IsA", "is a"),
        ("isa", "is a"),
        ("AtLocation", "is found at"),
        ("CapableOf", "can"),
        ("NotCapableOf", "cannot"),
        ("HasPrerequisite", "requires"),
        ("LocatedAbove", "located above"),  # not in the table: split into words
        ("born_in", "born in"),
        ("capital", "capital"),
    ],
)
def test_relation_words(name, words):
    assert relation_words(name) == words


@pytest.mark.parametrize(
    "name, words",
    [
        ("dog.n.01", "dog"),
        ("land_reform.n.01", "land reform"),
        ("lake_st._clair.n.01", "lake st. clair"),
        ("o.k..n.01", "o.k."),
        ("9/11.n.01", "9/11"),
        ("/c/en/ice_cream/n", "ice cream"),
        ("/c/en/dog", "dog"),
        ("pet store", "pet store"),
        ("  Tim_Cook ", "Tim Cook"),
        ("version.2.10", "version.2.10"),  # not a synset suffix: kept
    ],
)
def test_entity_words(name, words):
    assert entity_words(name) == words


def test_split_words_follows_bert_punctuation_splitting():
    assert split_words("Yo-yo's, e.g. 9/11!") == [
        "Yo",
        "-",
        "yo",
        "'",
        "s",
        ",",
        "e",
        ".",
        "g",
        ".",
        "9",
        "/",
        "11",
        "!",
    ]


def test_user_tsv_graph(tmp_path):
    path = tmp_path / "kg.tsv"
    path.write_text(
        "# head\trelation\ttail\n"
        "Tim_Cook\tCEO_of\tApple\n"
        "\n"
        "beijing\tcapital_of\tchina\r\n"
        "beijing\tIsA\tcity\n"
        "beijing\tIsA\tcity\n"  # duplicate: dropped
        "beijing\tIsA\tBeijing\n"  # self-loop once rendered: dropped
    )
    graph = read_tsv_graph(path)
    assert graph.triples == (
        Triple("Tim Cook", "ceo of", "Apple"),
        Triple("beijing", "capital of", "china"),
        Triple("beijing", "is a", "city"),
    )
    assert graph.branches == {"beijing": ("is a city", "capital of china"), "tim cook": ("ceo of Apple",)}
    assert load_graph(str(path)).triples == graph.triples


@pytest.mark.parametrize(
    "content, message",
    [
        ("a\tb\tc\nonly two\tcolumns\n", r"kg\.tsv:2: expected 3 tab-separated columns .* found 2"),
        ("a\tb\tc\td\n", r"kg\.tsv:1: expected 3 .* found 4"),
        ("a b c\n", r"kg\.tsv:1: expected 3 .* found 1"),
        ("a\t\tc\n", r"kg\.tsv:1: empty head, relation or tail"),
        ("# only a comment\n\n", r"kg\.tsv: no triples"),
        ("", r"kg\.tsv: no triples"),
        ("x.n.01\tr\tx.n.02\n", r"kg\.tsv: no triples"),  # the only triple is a self-loop once rendered
    ],
)
def test_bad_graph_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "kg.tsv"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        load_graph(str(path))
    assert "\n" not in str(error.value)


def test_non_utf8_graph_names_the_line(tmp_path):
    path = tmp_path / "kg.tsv"
    path.write_bytes(b"a\tb\tc\ncaf\xe9\tis a\tplace\n")
    with pytest.raises(UserError, match=r"kg\.tsv:2: not UTF-8"):
        load_graph(str(path))


def test_unknown_graph_name():
    with pytest.raises(UserError, match="not a builtin graph \\(wordnet, conceptnet\\) and not a file"):
        load_graph("freebase")


def test_an_empty_graph_object_has_no_branches():
    assert KnowledgeGraph("empty", ()).branches == {}
