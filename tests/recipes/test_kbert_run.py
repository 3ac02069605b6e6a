"""K-BERT (Liu et al., AAAI 2020) runs end to end on tiny-bert through the CLI.

A graph that matches nothing gives the plain model's inputs, so such a run equals plain fine-tuning
(same seed, data, initial weights and batches); the ablation switches change the inputs and still run;
a bad graph is refused before anything is written; eval and predict refuse a K-BERT run.
"""

import json
from pathlib import Path

import pytest
import torch

from lmforge.methods.kbert.config import KbertConfig
from lmforge.methods.kbert.graph import load_graph
from lmforge.methods.kbert.recipe import tree_inputs
from lmforge.methods.kbert.tree import SentenceTreeBuilder
from lmforge.models.classifier import load_classifier, load_saved_classifier

FAST = [
    "model.name=tiny-bert",
    "model.max_length=64",
    "train.max_steps=6",
    "train.batch_size=8",
    "train.eval_every=3",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
]


def read_final(run_dir: Path) -> dict:
    return json.loads((run_dir / "final.json").read_text())


def eval_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "eval"]


@pytest.fixture
def no_match_graph(tmp_path) -> Path:
    """A user graph whose one head occurs in no sentence: the trees carry no knowledge."""
    path = tmp_path / "graph.tsv"
    path.write_text("# no sentence names this entity\nqxzqxzq\tIsA\tplace\n")
    return path


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_wordnet_run_writes_a_classifier_run_and_eval_predict_refuse_it(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("run", "kbert/minilm_sst2", *FAST, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy" in result.stdout and "sentences get knowledge" in result.stderr
    for part in ("config.yaml", "manifest.json", "metrics.jsonl", "final.json", "report.html"):
        assert (run_dir / part).exists(), part
    for part in ("config.json", "model.safetensors", "tokenizer.json", "kbert.json"):
        assert (run_dir / "final" / part).exists(), part
    assert [r["step"] for r in eval_records(run_dir)] == [3, 6]
    final = read_final(run_dir)
    assert {"accuracy", "macro_f1", "loss"} <= set(final["metrics"])
    assert final["n_examples"] == 32 and sum(map(sum, final["confusion"])) == 32 and final["labels"]
    options = json.loads((run_dir / "final" / "kbert.json").read_text())
    assert options["graph"] == "wordnet" and options["max_entities"] == 2
    assert options["visible_matrix"] and options["soft_positions"] and options["lemmas"]
    assert options["train_trees"]["branches"] > 0  # WordNet names words of SST-2
    for command in (["eval", str(run_dir), "--data", "sst2:dev"], ["predict", str(run_dir), "a fine film"]):
        refused = cli(*command)
        assert refused.returncode == 2, refused.stderr[-2000:]
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "kbert run" in lines[0] and "plain token ids" in lines[0]


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_trec50_recipe_runs(cli, tmp_path):
    run_dir = tmp_path / "run"
    # TREC-50's dev labels must all occur in training: the whole training split, two steps.
    overrides = ["model.name=tiny-bert", "train.max_steps=2", "train.eval_every=2", "data.max_eval_examples=32"]
    result = cli("run", "kbert/minilm_trec50", *overrides, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    final = read_final(run_dir)
    assert len(final["labels"]) > 6 and final["eval_data"] == "trec50:dev"


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_graph_that_matches_nothing_equals_plain_fine_tuning(cli, tmp_path, no_match_graph):
    kbert_dir, plain_dir = tmp_path / "kbert", tmp_path / "plain"
    result = cli("run", "kbert/minilm_sst2", *FAST, f"kbert.graph={no_match_graph}", "--run-dir", str(kbert_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 of 64 sentences get knowledge" in result.stderr
    result = cli("run", "finetune/minilm_sst2", *FAST, "--run-dir", str(plain_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    kbert, plain = read_final(kbert_dir), read_final(plain_dir)
    assert kbert["confusion"] == plain["confusion"] and kbert["labels"] == plain["labels"]
    for name in ("accuracy", "macro_f1"):
        assert kbert["metrics"][name] == plain["metrics"][name]
    # A 4-D additive mask and explicit positions take other kernels than the plain 2-D mask: equal to rounding.
    assert kbert["metrics"]["loss"] == pytest.approx(plain["metrics"]["loss"], abs=1e-5)
    for a, b in zip(eval_records(kbert_dir), eval_records(plain_dir), strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_bad_graph_path_is_one_line_exit_2_and_nothing_written(cli, tmp_path):
    run_dir, missing = tmp_path / "run", tmp_path / "missing.tsv"
    result = cli("run", "kbert/minilm_sst2", *FAST, f"kbert.graph={missing}", "--run-dir", str(run_dir))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.tsv" in lines[0] and "not a builtin graph" in lines[0]
    assert not run_dir.exists()


def test_ablation_switches_change_the_inputs():
    model, tokenizer = load_classifier("tiny-bert", ["negative", "positive"], seed=0)
    builder = SentenceTreeBuilder(tokenizer, load_graph("wordnet"), max_length=64)
    trees = builder.trees(["the dogs chase a cat in the garden", "a good film"])
    assert any(max(tree.branch_ids) > 0 for tree in trees)

    def batch(**switches):
        return tree_inputs(model, tokenizer, KbertConfig(**switches)).collate(trees, "cpu")

    full, noise, hard = batch(), batch(visible_matrix=False), batch(soft_positions=False)
    assert torch.equal(full["input_ids"], noise["input_ids"]) and torch.equal(full["input_ids"], hard["input_ids"])
    assert not torch.equal(full["attention_mask"], noise["attention_mask"])  # branches seen by the whole sentence
    assert torch.equal(full["position_ids"], noise["position_ids"])
    assert not torch.equal(full["position_ids"], hard["position_ids"])  # 0..L-1 instead of soft positions
    assert torch.equal(full["attention_mask"], hard["attention_mask"])


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_a_run_with_both_ablations_records_them(cli, tmp_path):
    run_dir = tmp_path / "run"
    switches = ["kbert.visible_matrix=false", "kbert.soft_positions=false"]
    result = cli("run", "kbert/minilm_sst2", *FAST, *switches, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    options = json.loads((run_dir / "final" / "kbert.json").read_text())
    assert options["visible_matrix"] is False and options["soft_positions"] is False


def test_split_choices_and_a_malformed_question_is_refused():
    from lmforge.errors import UserError
    from lmforge.methods.kbert.choices import choice_texts

    texts = ["Dogs are (A) plants (B) mammals", "Ice is (A) cold (B) hot"]
    assert choice_texts(texts, ["A", "B"], "q.jsonl") == [
        "Dogs are plants",
        "Dogs are mammals",
        "Ice is cold",
        "Ice is hot",
    ]
    # a marker inside a choice's own text (as in OpenBookQA's train question 12-1145) stays in that choice
    assert choice_texts(["Q (A) x (B) y (B) w"], ["A", "B"], "q.jsonl") == ["Q x (B) y", "Q w"]
    with pytest.raises(UserError, match=r"q.jsonl, example 2: kbert.choices expects .*; no '\(B\)' found"):
        choice_texts(["Dogs are (A) plants (B) mammals", "Ice is (A) cold"], ["A", "B"], "q.jsonl")
    with pytest.raises(UserError, match=r"example 1: kbert.choices needs a question and non-empty choices"):
        choice_texts(["(A) plants (B) mammals"], ["A", "B"], "q.jsonl")


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_multiple_choice_scores_each_question_choice_tree_with_one_output(cli, tmp_path):
    import torch.nn.functional as F

    from lmforge.data.files import load_examples
    from lmforge.methods.kbert.choices import choice_texts
    from lmforge.methods.kbert.recipe import predict_logits

    run_dir = tmp_path / "run"
    result = cli("run", "kbert/minilm_obqa", *FAST, "kbert.choices=true", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "of 128 sentences get knowledge" in result.stderr  # eval: 32 questions x 4 choices
    final = read_final(run_dir)
    assert final["labels"] == ["A", "B", "C", "D"] and sum(map(sum, final["confusion"])) == 32
    assert json.loads((run_dir / "final" / "kbert.json").read_text())["choices"] is True
    model, tokenizer = load_saved_classifier(run_dir / "final")
    assert model.config.num_labels == 1
    # each question-choice text scored alone, batch 1: its C scores give the run's own evaluation loss
    dev = load_examples("obqa:dev").head(32)
    trees = SentenceTreeBuilder(tokenizer, load_graph("wordnet"), max_length=64).trees(
        choice_texts(dev.texts, final["labels"], "obqa:dev")
    )
    inputs = tree_inputs(model, tokenizer, KbertConfig())
    logits = torch.from_numpy(predict_logits(model, trees, inputs, 1, "cpu")).view(32, 4)
    gold = torch.tensor([final["labels"].index(label) for label in dev.labels])
    assert F.cross_entropy(logits, gold).item() == pytest.approx(final["metrics"]["loss"], abs=1e-5)


def test_max_entities_0_gives_the_plain_models_inputs():
    """The benchmark's multiple-choice baseline is K-BERT with no branches."""
    _, tokenizer = load_classifier("tiny-bert", ["A", "B"], seed=0)
    texts = ["the dogs chase a cat in the garden", "a good film about a bank"]
    trees = SentenceTreeBuilder(tokenizer, load_graph("wordnet"), max_entities=0, max_length=64).trees(texts)
    for tree, text in zip(trees, texts, strict=True):
        assert tree.input_ids == tokenizer(text, truncation=True, max_length=64)["input_ids"]
        assert tree.soft_positions == list(range(len(tree.input_ids))) and max(tree.branch_ids) == 0
    assert max(SentenceTreeBuilder(tokenizer, load_graph("wordnet"), max_length=64).trees(texts)[0].branch_ids) > 0
