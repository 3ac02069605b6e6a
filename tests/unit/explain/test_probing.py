import argparse
import json
from collections import Counter

import pytest
import torch

from lmforge.cli.explain import add_probe_parser
from lmforge.errors import UserError
from lmforge.explain.probing import (
    CLASSES,
    Occurrence,
    control_labels,
    find_occurrences,
    format_probe_table,
    layer_representations,
    probe_accuracy,
    probe_layers,
    wordnet_pos_table,
    write_probe_report,
)
from lmforge.models.classifier import load_classifier, load_encoder, tiny_bert_tokenizer


def test_pos_table_keeps_only_unambiguous_single_words():
    table = wordnet_pos_table()
    assert "film" not in table  # film.n.02 and film.v.01 in WN18RR: ambiguous
    assert "blue" not in table  # blue.n.01 and blue.v.01
    assert table["movie"] == "noun" and table["make"] == "verb" and table["real"] == "adjective"
    assert "he" not in table and "may" not in table  # function words (he.n.02 is helium)
    assert not any("_" in word for word in table)
    assert set(table.values()) == set(CLASSES)


def test_pos_table_reads_synset_names(tmp_path):
    triples = [
        "run.v.01\t_hypernym\trun.n.02",  # ambiguous: out
        "green.s.01\t_similar_to\tgreen.a.02",  # satellite adjective is an adjective
        "land_reform.n.01\t_hypernym\tReform.n.01",  # multi-word: out; lower-cased
        "quickly.r.01\t_also_see\tgallop.v.01",  # adverbs dropped
    ]
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("\n".join(triples) + "\n")
    assert wordnet_pos_table(tmp_path) == {"gallop": "verb", "green": "adjective", "reform": "noun"}


def test_occurrences_follow_the_tokenizer_words_and_the_caps():
    tokenizer = tiny_bert_tokenizer()
    texts = ["the movie's story", "a story , a movie", "story story story", "nothing here"]
    table = {"movie": "noun", "story": "noun", "make": "verb"}
    found = find_occurrences(texts, tokenizer, table, limit=100, seed=0, per_word=3)
    assert Counter(o.word_type for o in found) == {"movie": 2, "story": 3}  # `movie's` splits at the apostrophe
    for occ in found:
        encoding = tokenizer(texts[occ.sentence])
        start, end = encoding.word_to_chars(occ.word)
        assert texts[occ.sentence][start:end] == occ.word_type
    assert find_occurrences(texts, tokenizer, table, limit=100, seed=0, per_word=3) == found  # deterministic
    assert len(find_occurrences(texts, tokenizer, table, limit=2, seed=0, per_word=3)) == 2


def test_control_labels_depend_on_the_word_type_only():
    counts = {"noun": 80, "verb": 20}
    types = [f"w{i}" for i in range(3000)]
    labels = control_labels(types + types[:10], counts, seed=0)  # repeats: one label per type
    assert set(labels) == set(types)
    assert control_labels(types, counts, seed=0) == labels  # deterministic
    assert control_labels(types[:50], counts, seed=0) == {w: labels[w] for w in types[:50]}  # not on the others
    assert control_labels(types, counts, seed=1) != labels
    noun_share = sum(v == "noun" for v in labels.values()) / len(labels)
    assert 0.77 < noun_share < 0.83  # drawn from the empirical distribution


def test_probe_separates_clusters_and_stays_at_chance_on_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (800,), generator=generator)
    centres = 3.0 * torch.randn(3, 20, generator=generator)
    separable = centres[labels] + torch.randn(800, 20, generator=generator)  # (N, H)
    assert probe_accuracy(separable[:600], labels[:600], separable[600:], labels[600:], 3) > 0.95
    noise = torch.randn(800, 20, generator=generator)
    assert probe_accuracy(noise[:600], labels[:600], noise[600:], labels[600:], 3) < 0.45  # chance is 1/3


def test_representations_take_the_first_word_piece_of_every_layer():
    classifier, tokenizer = load_classifier("tiny-bert", ["a", "b"], seed=0)
    classifier.eval()
    texts = ["an unforgettable story", "the film"]
    occurrences = [Occurrence(0, 1, "unforgettable", "adjective"), Occurrence(1, 1, "film", "noun")]
    features = layer_representations(classifier, tokenizer, texts, occurrences)
    assert features.shape == (3, 2, 64)  # (L + 1, N, H)
    assert torch.equal(features, layer_representations(classifier.bert, tokenizer, texts, occurrences))
    inputs = tokenizer(texts[0], return_tensors="pt")
    assert len(tokenizer.tokenize("unforgettable")) > 1  # several word pieces: the first one counts
    with torch.no_grad():
        hidden = classifier.bert(**inputs, output_hidden_states=True).hidden_states
    token = inputs.word_to_tokens(0, 1).start
    assert torch.allclose(features[2, 0], hidden[2][0, token], atol=1e-6)


def test_probe_layers_and_report(tmp_path):
    model, tokenizer = load_encoder("tiny-bert", seed=0)
    result = probe_layers(model, tokenizer, limit=40, seed=0)
    assert len(result.rows) == model.config.num_hidden_layers + 1
    assert (result.n_occurrences, result.n_train, result.n_test) == (40, 32, 8)
    for row in result.rows:
        assert 0 <= row.control_accuracy <= 1 and row.selectivity == pytest.approx(row.accuracy - row.control_accuracy)
    assert len(format_probe_table(result).splitlines()) == len(result.rows) + 2
    json_path, html_path = write_probe_report(result, tmp_path / "out")
    saved = json.loads(json_path.read_text())
    assert [r["layer"] for r in saved["rows"]] == [0, 1, 2]
    page = html_path.read_text()
    assert "<svg" in page and "selectivity" in page and "<script" not in page


def _run(argv):
    parser = argparse.ArgumentParser(prog="lmforge")
    add_probe_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_bad_inputs_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown property 'depth'"):
        _run(["probe", "tiny-bert", "--property", "depth"])
    with pytest.raises(UserError, match="--limit 5: too few"):
        _run(["probe", "tiny-bert", "--limit", "5"])
    with pytest.raises(UserError, match="model folder not found"):
        _run(["probe", str(tmp_path / "missing")])
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("method: lora\n")
    with pytest.raises(UserError, match="has not finished"):
        _run(["probe", str(unfinished)])
    model, tokenizer = load_encoder("tiny-bert", seed=0)
    with pytest.raises(UserError, match="unknown property"):
        probe_layers(model, tokenizer, property="depth")
