"""Layer-wise linear probing with control tasks.

Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks" (EMNLP). A probe is a
classifier trained on frozen representations to predict a linguistic property; high probe accuracy
alone does not show that the representation encodes the property, since an expressive probe can
memorise. The paper pairs each task with a *control task*: the same inputs, but every word TYPE
gets a random label drawn from the task's empirical label distribution, so the only
way to succeed is to memorise the type -> label map. *Selectivity* = task accuracy - control
accuracy; a good probe is accurate and selective.

Here: the property `wordnet-pos` (a word type's part of speech: noun, verb or adjective, read from
the WordNet synset names of WN18RR, bundled in datasets/wn18rr), occurrences of those words in the
SST-2 training sentences, one representation per occurrence and layer (its first word piece;
layer 0 is the embedding output), and a multinomial logistic-regression probe per layer
(standardised features, fixed L2, full-batch L-BFGS from zero, so it is deterministic).
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.data.builtin import DATA_DIR
from lmforge.data.files import load_examples
from lmforge.errors import UserError

if TYPE_CHECKING:  # torch and transformers are imported inside the functions: the CLI starts fast
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROPERTIES = {"wordnet-pos": "part of speech of a word type (noun / verb / adjective), from WN18RR's WordNet synsets"}
SENTENCES = "sst2:train"
CLASSES = ["noun", "verb", "adjective"]
# WordNet's POS letters; `s` (satellite adjective) is an adjective. Adverbs (`r`) are dropped: only
# 7 single-word lemmas of WN18RR are unambiguous adverbs, too few for a class.
WORDNET_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective"}
# WordNet holds only open-class words, so a function word found there is a homograph with a rare
# content sense (`he.n.02` is helium, `may.n.01` the month, `while.n.01` a time); likewise words used
# mostly as adverbs (`even.v.03`, `still.v.03`, `well.n.01`). Their type label would be wrong for
# almost every occurrence in running text, so they are left out.
FUNCTION_WORDS = frozenset(
    """
    i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our
    ours ourselves they them their theirs themselves one ones who whom whose which what that this these those
    a an the some any no every each either neither both all half several many much more most few less least
    little enough such another other own same about above across after against along amid among around as at
    before behind below beneath beside besides between beyond by down during except for from in inside into
    like near of off on onto out outside over past per since than through throughout till to toward towards
    under underneath unlike until up upon via with within without and but or nor so yet if unless because
    although though while whereas whether once can could may might must shall should will would ought need
    dare not never also just even still only very too quite rather well almost already always ever often
    perhaps then there here now again away back however indeed else instead maybe sometimes soon today
    zero two three four five six seven eight nine ten hundred thousand million billion first second third
    last oh yes ok okay
    """.split()
)
PER_WORD = 20  # occurrences kept per word type, so that frequent words do not dominate
TRAIN_SHARE = 0.8
MAX_LENGTH = 128  # word pieces per sentence; SST-2 sentences are shorter
WEIGHT_DECAY = 1e-3  # L2 on the probe weights (added to the mean cross-entropy), fixed, not tuned
LBFGS_STEPS = 300


@dataclass(frozen=True)
class Occurrence:
    sentence: int  # index into the sentence list
    word: int  # word index as the tokenizer's pre-tokenizer splits the sentence (`word_ids()`)
    word_type: str
    label: str


@dataclass
class LayerRow:
    layer: int  # 0 = embedding output, i = transformer layer i
    accuracy: float
    control_accuracy: float
    selectivity: float


@dataclass
class ProbeResult:
    property: str
    sentences: str
    classes: list[str]
    rows: list[LayerRow]
    majority_accuracy: float  # always predicting the most frequent training label: the floor
    n_occurrences: int
    n_train: int
    n_test: int
    n_word_types: int
    test_types_seen_share: float  # test occurrences whose type is in training: only those can pass the control task
    class_counts: dict[str, int]
    seed: int
    limit: int
    per_word: int
    weight_decay: float
    model: str = ""
    seconds: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few word types per class, to read


# ---- the property ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def wordnet_pos_table(folder: Path = DATA_DIR / "wn18rr") -> dict[str, str]:
    """word type -> noun / verb / adjective, from every synset name (`land_reform.n.01`) in WN18RR.

    Single-word lemmas only (no underscore), lower-cased, and only words listed under exactly one
    part of speech in these files: a type-level probe needs one unambiguous label per word type.
    WN18RR names about 41k of WordNet's 117k synsets and a synset name shows its first lemma only, so a
    word unambiguous here may still have senses of another part of speech in WordNet.
    """
    parts: dict[str, set[str]] = defaultdict(set)
    for split in ("train", "valid", "test"):
        for line in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines():
            head, _, tail = line.split("\t")
            for synset in (head, tail):
                lemma, letter, _ = synset.rsplit(".", 2)
                parts[lemma.lower()].add(WORDNET_POS.get(letter, "adverb"))
    return {
        word: next(iter(pos))
        for word, pos in sorted(parts.items())
        if "_" not in word and len(pos) == 1 and pos != {"adverb"} and word not in FUNCTION_WORDS
    }


def check_request(property: str, limit: int) -> None:
    """One-line UserErrors for a property lmforge does not know or too small a sample."""
    if property not in PROPERTIES:
        raise UserError(f"unknown property {property!r} (properties: {', '.join(PROPERTIES)})")
    if limit < 10:
        raise UserError(f"--limit {limit}: too few occurrences to split 80/20 and probe; use 10 or more")


# ---- occurrences and control labels ---------------------------------------------------------------


def find_occurrences(
    texts: list[str], tokenizer, table: dict[str, str], limit: int, seed: int = 0, per_word: int = PER_WORD
) -> list[Occurrence]:
    """Occurrences of the table's words in `texts`, at most `per_word` per type and `limit` in all.

    Word types are visited in a seeded random order and each contributes all its occurrences (up to
    `per_word`, a seeded sample), so most types have several occurrences and the 80/20 split puts
    most test types in training too, as in Hewitt & Liang's control tasks. The result is shuffled.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("probing needs a fast tokenizer (word_ids() maps word pieces to words)")
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    encodings = tokenizer(texts, truncation=True, max_length=MAX_LENGTH).encodings
    for sentence, (text, encoding) in enumerate(zip(texts, encodings)):
        for word in sorted({w for w in encoding.word_ids if w is not None}):
            start, end = encoding.word_to_chars(word)
            word_type = text[start:end].lower()
            if word_type in table:
                found[word_type].append((sentence, word))
    rng = random.Random(seed)
    word_types = sorted(found)
    rng.shuffle(word_types)
    chosen: list[Occurrence] = []
    for word_type in word_types:
        places = found[word_type]
        if len(places) > per_word:
            places = sorted(rng.sample(places, per_word))
        chosen += [Occurrence(s, w, word_type, table[word_type]) for s, w in places]
        if len(chosen) >= limit:
            break
    chosen = chosen[:limit]
    rng.shuffle(chosen)
    return chosen


def control_labels(word_types: list[str], label_counts: dict[str, int], seed: int = 0) -> dict[str, str]:
    """Hewitt & Liang's control task: each word type gets one label drawn from the empirical label
    distribution `label_counts`. Each type's draw is seeded by (seed, type), so a type's label does
    not depend on which other types were sampled."""
    classes = sorted(label_counts)
    weights = [label_counts[c] for c in classes]
    return {w: random.Random(f"control:{seed}:{w}").choices(classes, weights)[0] for w in sorted(set(word_types))}


# ---- representations ------------------------------------------------------------------------------


def layer_representations(
    model: PreTrainedModel, tokenizer, texts: list[str], occurrences: list[Occurrence], batch_size: int = 32
) -> torch.Tensor:
    """(L + 1, N, H): each occurrence's first word piece at every layer (0 = embeddings)."""
    import torch

    by_sentence: dict[int, list[int]] = defaultdict(list)  # sentence -> rows of `occurrences`
    for row, occ in enumerate(occurrences):
        by_sentence[occ.sentence].append(row)
    sentences = sorted(by_sentence, key=lambda s: len(texts[s]))  # similar lengths in a batch: less padding
    device = next(model.parameters()).device
    model.eval()
    features: torch.Tensor | None = None
    with torch.no_grad():
        for first in range(0, len(sentences), batch_size):
            batch = sentences[first : first + batch_size]
            inputs = tokenizer(
                [texts[s] for s in batch], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt"
            )
            out = model(**inputs.to(device), output_hidden_states=True)
            hidden = torch.stack(out.hidden_states).float().cpu()  # (L + 1, B, T, H)
            if features is None:
                features = torch.zeros(hidden.shape[0], len(occurrences), hidden.shape[-1])
            for b, sentence in enumerate(batch):
                for row in by_sentence[sentence]:
                    token = inputs.word_to_tokens(b, occurrences[row].word).start  # first word piece
                    features[:, row] = hidden[:, b, token]
    return features


# ---- the probe ------------------------------------------------------------------------------------


def probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    weight_decay: float = WEIGHT_DECAY,
    steps: int = LBFGS_STEPS,
) -> float:
    """Test accuracy of multinomial logistic regression on (N, H) features with labels 0..C-1.

    Features are standardised with the training mean and deviation. The loss is convex with a
    unique minimum (L2 > 0), and L-BFGS starts from zero weights: no seed, same answer each time.
    """
    import torch

    mean, scale = train_x.mean(0), train_x.std(0).clamp_min(1e-6)  # (H,)
    train_x, test_x = (train_x - mean) / scale, (test_x - mean) / scale
    weight = torch.zeros(train_x.shape[1], num_classes, requires_grad=True)  # (H, C)
    bias = torch.zeros(num_classes, requires_grad=True)  # (C,)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = train_x @ weight + bias  # (N, C)
        loss = torch.nn.functional.cross_entropy(logits, train_y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    # The matrices are small: on a busy CPU, synchronising threads costs more than it saves (measured
    # 1.5 s with 2 threads vs 0.04 s with 1 for 240 x 64 features).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        predicted = (test_x @ weight + bias).argmax(-1)  # (N_test,)
    return (predicted == test_y).sum().item() / len(test_y)


def probe_layers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    property: str = "wordnet-pos",
    limit: int = 8000,
    seed: int = 0,
    per_word: int = PER_WORD,
) -> ProbeResult:
    """Probe every layer of a BERT-family model (encoder or classifier) for `property`, with the
    control task, on up to `limit` word occurrences from the SST-2 training sentences."""
    import torch

    started = time.perf_counter()
    check_request(property, limit)
    table, classes = wordnet_pos_table(), CLASSES  # the one property so far
    texts = load_examples(SENTENCES).texts
    occurrences = find_occurrences(texts, tokenizer, table, limit, seed, per_word)
    counts = Counter(o.label for o in occurrences)
    if len(occurrences) < 10 or len(counts) < 2:
        raise UserError(f"only {len(occurrences)} occurrences of {property} words found in {SENTENCES}: too few")
    control = control_labels([o.word_type for o in occurrences], counts, seed)
    n_train = int(round(TRAIN_SHARE * len(occurrences)))  # `occurrences` is already shuffled (seeded)
    index = {c: i for i, c in enumerate(classes)}
    real_y = torch.tensor([index[o.label] for o in occurrences])  # (N,)
    control_y = torch.tensor([index[control[o.word_type]] for o in occurrences])  # (N,)
    features = layer_representations(model, tokenizer, texts, occurrences)  # (L + 1, N, H)

    rows = []
    for layer, x in enumerate(features):
        accuracy = probe_accuracy(x[:n_train], real_y[:n_train], x[n_train:], real_y[n_train:], len(classes))
        control_accuracy = probe_accuracy(
            x[:n_train], control_y[:n_train], x[n_train:], control_y[n_train:], len(classes)
        )
        rows.append(LayerRow(layer, accuracy, control_accuracy, round(accuracy - control_accuracy, 6)))
    majority = Counter(real_y[:n_train].tolist()).most_common(1)[0][0]
    train_types = {o.word_type for o in occurrences[:n_train]}
    test = occurrences[n_train:]
    by_class = {c: sorted({o.word_type for o in occurrences if o.label == c})[:12] for c in classes}
    return ProbeResult(
        property=property,
        sentences=SENTENCES,
        classes=classes,
        rows=rows,
        majority_accuracy=(real_y[n_train:] == majority).sum().item() / len(test),
        n_occurrences=len(occurrences),
        n_train=n_train,
        n_test=len(test),
        n_word_types=len({o.word_type for o in occurrences}),
        test_types_seen_share=sum(o.word_type in train_types for o in test) / max(1, len(test)),
        class_counts={c: counts.get(c, 0) for c in classes},
        seed=seed,
        limit=limit,
        per_word=per_word,
        weight_decay=WEIGHT_DECAY,
        seconds=time.perf_counter() - started,
        examples=by_class,
    )


def load_probe_model(name_or_run: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A finished run's model (a folder with config.yaml), else the encoder of a model name or folder."""
    from lmforge.models.classifier import BUILTIN_MODELS, load_encoder

    path = Path(name_or_run).expanduser()
    if name_or_run not in BUILTIN_MODELS:
        if (path / "config.yaml").is_file():
            from lmforge.registry import load_finished_run

            _, _, model, tokenizer = load_finished_run(path, classifier_command="probe")
            return model, tokenizer
        looks_like_path = name_or_run.startswith(("/", ".", "~")) or (path.parent != Path(".") and path.parent.is_dir())
        if not path.is_dir() and looks_like_path:
            raise UserError(f"{name_or_run}: model folder not found")
    return load_encoder(name_or_run, seed)


# ---- output ---------------------------------------------------------------------------------------


def format_probe_table(result: ProbeResult) -> str:
    lines = [f"{'layer':>5}  {'accuracy':>8}  {'control':>8}  {'selectivity':>11}"]
    lines += [
        f"{r.layer:>5}  {r.accuracy:>8.4f}  {r.control_accuracy:>8.4f}  {r.selectivity:>11.4f}" for r in result.rows
    ]
    counts = ", ".join(f"{c} {n}" for c, n in result.class_counts.items())
    lines.append(
        f"majority-class accuracy {result.majority_accuracy:.4f}; {result.n_occurrences} occurrences of "
        f"{result.n_word_types} word types ({counts}); {result.n_train} train / {result.n_test} test; "
        f"{result.test_types_seen_share:.0%} of test occurrences have a type seen in training"
    )
    return "\n".join(lines)


def write_probe_report(result: ProbeResult, out_dir: Path) -> tuple[Path, Path]:
    """probe.json and a self-contained probe.html (chart and table) in `out_dir`; returns both paths."""
    from lmforge.core.report import html_page, line_chart_svg
    from lmforge.core.rundir import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "probe.json", out_dir / "probe.html"
    write_text_atomic(json_path, json.dumps(asdict(result), indent=2) + "\n")

    chart = line_chart_svg(
        {
            "accuracy": [(r.layer, r.accuracy) for r in result.rows],
            "control accuracy": [(r.layer, r.control_accuracy) for r in result.rows],
            "selectivity": [(r.layer, r.selectivity) for r in result.rows],
            "majority class": [(r.layer, result.majority_accuracy) for r in result.rows],
        },
        f"Linear probe for {result.property}, per layer",
        "layer (0 = embeddings)",
        "accuracy",
    )
    body = "".join(
        f'<tr><td class="num">{r.layer}</td><td class="num">{r.accuracy:.4f}</td>'
        f'<td class="num">{r.control_accuracy:.4f}</td><td class="num">{r.selectivity:.4f}</td></tr>'
        for r in result.rows
    )
    facts = [
        ("model", result.model),
        ("property", f"{result.property}: {PROPERTIES[result.property]}"),
        ("sentences", result.sentences),
        ("occurrences", f"{result.n_occurrences} ({result.n_train} train / {result.n_test} test), seed {result.seed}"),
        ("word types", f"{result.n_word_types}, at most {result.per_word} occurrences each"),
        ("classes", ", ".join(f"{c} {n}" for c, n in result.class_counts.items())),
        ("test types seen in training", f"{result.test_types_seen_share:.1%}"),
        ("majority-class accuracy", f"{result.majority_accuracy:.4f}"),
        ("probe", f"multinomial logistic regression, standardised features, L2 {result.weight_decay:g}, L-BFGS"),
    ]
    facts += [(f"{c} examples", ", ".join(words)) for c, words in result.examples.items()]
    page = html_page(
        f"probe: {result.model}",
        f"<h1>Probe: {escape(result.property)} / {escape(result.model)}</h1>"
        "<p>Hewitt &amp; Liang 2019: the control task gives every word type a random label from the same label "
        "distribution; selectivity = accuracy - control accuracy. High accuracy with low selectivity means the "
        "probe memorised word types rather than read the property from the representation.</p>"
        + "<table>"
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
        + "</table>"
        + chart
        + "<table><tr><th>layer</th><th>accuracy</th><th>control accuracy</th><th>selectivity</th></tr>"
        + body
        + "</table>",
    )
    write_text_atomic(html_path, page)
    return json_path, html_path
