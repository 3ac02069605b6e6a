"""K-BERT's knowledge, embedding and seeing layers for English word-piece encoders.

K-BERT (Liu et al., AAAI 2020, "K-BERT: Enabling Language Representation with Knowledge Graph",
section 3 "Methodology", cited by the names of its parts):
- Knowledge layer: the entities of the sentence are looked up in the graph (K-Query) and each gets up
  to `max_entities` branches "relation tail" hung on it (K-Inject): a sentence tree;
- Embedding layer (Figure 2): the tree is flattened with each entity's branches right after it, and each
  token gets a SOFT POSITION: a branch continues from its entity's last position, and the trunk resumes
  where it left off, so the trunk keeps the positions it has without knowledge;
- Seeing layer (Figure 3): the visible matrix, M_ij = 0 if token i may see token j and -inf otherwise:
  a trunk token sees the trunk, a branch token sees its own branch and its entity, an entity also sees
  its own branches;
- Mask-Transformer: mask-self-attention, softmax((Q K^T + M) / sqrt(d_k)) V, in every layer.

The original code is Chinese and character-level. Here:
- Words are split as BERT's basic tokenizer splits them (`graph.split_words`); mentions are found by
  longest match over words, left to right, without case. A word sequence matches a head as written or,
  failing that, with every word lemmatised by `lemma`, rules for English plurals: `-ies` -> `-y`
  (`berries`), `-sses`, `-xes`, `-zes`, `-ches`, `-shes` lose `es` (`classes`, `boxes`, `churches`), any
  other `-s` goes (`dogs`, `horses`) except in `-ss`, `-us`, `-is` (`glass`, `virus`, `analysis`); words
  of up to 3 letters stay (`gas`, `has`). No verb or irregular forms: a lemma that is wrong only costs a
  missed or odd match, and the exact form is always tried first. A mention must hold a word with a
  letter that is not in STOP_WORDS: WordNet lists function words under rare senses (`may` the month,
  `he` helium), which would inject noise.
- An entity's branches are taken in the graph's sorted order (`KnowledgeGraph.branches`), never in set order.
- Tokens are word pieces; the trunk is `[CLS] sentence [SEP]` (both part of the trunk).
- Truncation to `max_length` never cuts a branch: while the tree is too long, whole branches are dropped,
  the last one in reading order first; if the trunk alone is still too long, it is cut at the end like
  plain BERT input (its last pieces go, `[SEP]` stays). Every kept branch thus hangs on a complete entity.

`collate` returns what any BERT-family model of transformers takes without changes to its code:
`input_ids`, `attention_mask` as an ADDITIVE float mask (B, 1, L, L) (0 visible, `finfo(dtype).min`
hidden; transformers 5 passes a 4-D mask through unchanged to eager and sdpa attention), `position_ids`
(soft, or hard 0..L-1 for the ablation) and `token_type_ids` (zeros: one text per example; a branch is
in its entity's segment, as in the original code). Padding keys are hidden from every token; a padding
row sees the real tokens, as in transformers' own padding mask, so that without knowledge the inputs
equal the plain model's. `visible_matrix=False` lets every real token see every real token: the
paper's "knowledge noise" ablation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lmforge.errors import UserError
from lmforge.methods.kbert.graph import KnowledgeGraph, split_words

# Never an entity alone (a mention needs another word): function words and auxiliaries, whose WordNet
# senses are rare homographs, and whose branches would be noise in almost every sentence.
STOP_WORDS = frozenset(
    """
    i me my mine myself you your yours he him his she her hers it its we us our ours they them their theirs
    who whom whose which what that this these those a an the some any no every each either neither both all
    many much more most few less such another other own same about above across after against along among
    around as at before behind below beside between beyond by down during except for from in inside into like
    near of off on onto out over past per since than through till to toward under until up upon via with
    within without and but or nor so yet if unless because although though while whether once can could may
    might must shall should will would not never also just even still only very too quite rather well here
    there now then again is am are was were be been being has have had having do does did done one oh yes ok
    """.split()
)


def lemma(word: str) -> str:
    """A rule-based English lemma for plurals (see the module docstring), lower case."""
    word = word.lower()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class Mention:
    """Words [start, end) of a sentence that name a graph entity, and its chosen branch texts."""

    start: int
    end: int
    branches: tuple[str, ...]


def find_mentions(
    words: list[str],
    branches: dict[str, tuple[str, ...]],
    max_entities: int = 2,
    lemmas: bool = True,
    prefixes: frozenset[str] | None = None,
) -> list[Mention]:
    """Longest-match entity mentions, left to right, each with its first `max_entities` branches.

    `branches` is `KnowledgeGraph.branches`; `prefixes`, `key_prefixes(branches)` (computed when None).
    """
    if prefixes is None:
        prefixes = key_prefixes(branches)
    lower = [w.lower() for w in words]
    lemmatised = [lemma(w) for w in lower] if lemmas else lower
    content = [w not in STOP_WORDS and any(c.isalpha() for c in w) for w in lower]
    mentions, i = [], 0
    while i < len(words):
        # Grow the span while it is still the start of some head; remember the longest complete head.
        best, exact, lemmatised_key, has_content = None, None, None, False
        for j in range(i, len(words)):
            exact = lower[j] if exact is None else f"{exact} {lower[j]}"
            lemmatised_key = lemmatised[j] if lemmatised_key is None else f"{lemmatised_key} {lemmatised[j]}"
            has_content = has_content or content[j]
            exact_on, lemma_on = exact in prefixes, lemmatised_key in prefixes
            if not (exact_on or lemma_on):
                break
            found = (exact_on and branches.get(exact)) or (lemma_on and branches.get(lemmatised_key))
            if found and has_content:
                best = Mention(i, j + 1, found[:max_entities])
        if best is None:
            i += 1
        else:
            mentions.append(best)
            i = best.end
    return mentions


def key_prefixes(branches: dict[str, tuple[str, ...]]) -> frozenset[str]:
    """Every leading run of words of every head key ("new", "new york", "new york city"): prunes the search."""
    prefixes = set()
    for key in branches:
        words = key.split(" ")
        prefixes.update(" ".join(words[:n]) for n in range(1, len(words) + 1))
    return frozenset(prefixes)


@dataclass
class SentenceTree:
    """One flattened sentence tree; every list has one entry per token, (L,)."""

    input_ids: list[int]
    soft_positions: list[int]
    branch_ids: list[int]  # 0 on the trunk; k on the tokens of the sentence's k-th branch (1-based)
    mention_ids: list[int]  # m on the tokens of the m-th mention (1-based) and of its branches; 0 elsewhere
    mentions: list[Mention] = field(default_factory=list)  # with the branches kept after truncation
    dropped_branches: int = 0  # branches removed to fit max_length


@dataclass
class _Anchored:
    """A mention placed on the trunk's word pieces, with the branches still kept: [(text, pieces)]."""

    mention: Mention
    number: int
    first_piece: int
    last_piece: int
    branches: list[tuple[str, list[int]]]


class SentenceTreeBuilder:
    """Sentences -> flattened sentence trees -> model inputs, for one tokenizer and one graph.

    `tokenizer` must be a fast (Rust) tokenizer with `[CLS]` and `[SEP]`-style tokens (it maps word pieces
    back to words with `word_ids`). Branch texts are tokenized once and cached.
    """

    def __init__(
        self,
        tokenizer,
        graph: KnowledgeGraph,
        max_entities: int = 2,
        max_length: int = 128,
        lemmas: bool = True,
    ):
        if max_length < 2:
            raise UserError(f"kbert max_length: {max_length} is too short (at least 2: [CLS] and [SEP])")
        if max_entities < 0:
            raise UserError(f"kbert max_entities: {max_entities} (expected 0 or more)")
        if not getattr(tokenizer, "is_fast", False) or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise UserError("kbert: the tokenizer must be a fast tokenizer with [CLS] and [SEP] tokens")
        self.tokenizer = tokenizer
        self.branches = graph.branches
        self.prefixes = key_prefixes(self.branches)
        self.max_entities = max_entities
        self.max_length = max_length
        self.lemmas = lemmas
        self._branch_pieces: dict[str, list[int]] = {}

    def trees(self, texts: list[str]) -> list[SentenceTree]:
        words = [split_words(text) for text in texts]
        mentions = [find_mentions(w, self.branches, self.max_entities, self.lemmas, self.prefixes) for w in words]
        encoded = self.tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        new = sorted({b for sentence in mentions for m in sentence for b in m.branches} - self._branch_pieces.keys())
        if new:  # one tokenizer call for every branch text not seen before
            pieces = self.tokenizer(new, add_special_tokens=False)["input_ids"]
            self._branch_pieces.update(zip(new, pieces))
        return [
            self._flatten(encoded["input_ids"][i], encoded.word_ids(i), mentions[i], len(words[i]))
            for i in range(len(texts))
        ]

    def encode(
        self,
        texts: list[str],
        visible_matrix: bool = True,
        soft_positions: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        position_offset: int = 0,
    ) -> dict[str, torch.Tensor]:
        """`collate(self.trees(texts), ...)`: the model inputs of a batch of sentences."""
        return collate(
            self.trees(texts),
            self.tokenizer.pad_token_id or 0,
            visible_matrix=visible_matrix,
            soft_positions=soft_positions,
            dtype=dtype,
            device=device,
            position_offset=position_offset,
        )

    def _flatten(self, pieces: list[int], word_ids: list[int | None], mentions: list[Mention], n_words: int):
        # The piece span of every word: words the tokenizer drops entirely (control characters) have none.
        first: list[int | None] = [None] * n_words
        last: list[int | None] = [None] * n_words
        for k, w in enumerate(word_ids):
            if w is None:  # a special token; none are added here, but a tokenizer may insist
                continue
            if first[w] is None:
                first[w] = k
            last[w] = k
        # Mentions that have pieces, numbered from 1, with their branches as (text, pieces).
        anchored: list[_Anchored] = []
        for m in mentions:
            starts = [first[w] for w in range(m.start, m.end) if first[w] is not None]
            ends = [last[w] for w in range(m.start, m.end) if last[w] is not None]
            if starts:
                kept = [(b, self._branch_pieces[b]) for b in m.branches if self._branch_pieces[b]]
                anchored.append(_Anchored(m, len(anchored) + 1, starts[0], ends[-1], kept))

        # Truncation: drop whole branches, the last in reading order first; then cut the trunk.
        trunk_length = len(pieces) + 2  # [CLS] ... [SEP]
        total = trunk_length + sum(len(p) for a in anchored for _, p in a.branches)
        dropped = 0
        for a in reversed(anchored):
            while a.branches and total > self.max_length:
                total -= len(a.branches.pop()[1])
                dropped += 1
        if trunk_length > self.max_length:
            pieces = pieces[: self.max_length - 2]  # no branch is left at this point

        piece_mention = [0] * len(pieces)
        branches_after: dict[int, _Anchored] = {}  # the last piece of an entity -> the entity
        for a in anchored:
            for k in range(a.first_piece, min(a.last_piece + 1, len(pieces))):
                piece_mention[k] = a.number
            if a.branches:
                branches_after[a.last_piece] = a

        ids, positions, branch_ids, mention_ids = [self.tokenizer.cls_token_id], [0], [0], [0]
        position = branch_number = 0
        for k, piece in enumerate(pieces):
            position += 1
            ids.append(piece)
            positions.append(position)
            branch_ids.append(0)
            mention_ids.append(piece_mention[k])
            if k in branches_after:
                entity = branches_after[k]
                for _, branch in entity.branches:  # each branch counts on from its entity's last position
                    branch_number += 1
                    ids += branch
                    positions += range(position + 1, position + 1 + len(branch))
                    branch_ids += [branch_number] * len(branch)
                    mention_ids += [entity.number] * len(branch)
        ids.append(self.tokenizer.sep_token_id)
        positions.append(position + 1)
        branch_ids.append(0)
        mention_ids.append(0)
        kept = [Mention(a.mention.start, a.mention.end, tuple(b for b, _ in a.branches)) for a in anchored]
        return SentenceTree(ids, positions, branch_ids, mention_ids, kept, dropped)


def visibility(branch_ids: torch.Tensor, mention_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The visible matrix (B, L, L), True where token i (row) may attend to token j (column).

    branch_ids, mention_ids: (B, L) as in SentenceTree, branch_ids -1 on padding; real: (B, L) bool.
    """
    branch_ids, mention_ids = branch_ids.to(torch.int32), mention_ids.to(torch.int32)  # less memory traffic
    in_mention = mention_ids != 0
    on_trunk = branch_ids == 0
    # An entity's mention number on its trunk tokens, and on its branches' tokens; -1 / -2 elsewhere never meet.
    entity = torch.where(on_trunk & in_mention, mention_ids, -1)  # (B, L)
    hanging = torch.where(~on_trunk & in_mention, mention_ids, -2)  # (B, L)
    visible = branch_ids[:, :, None] == branch_ids[:, None, :]  # trunk-trunk, or within one branch: (B, L, L)
    visible |= entity[:, :, None] == hanging[:, None, :]  # an entity sees its branches
    visible |= hanging[:, :, None] == entity[:, None, :]  # a branch sees its entity
    visible &= real[:, None, :]  # padding is hidden from everyone
    visible |= ~real[:, :, None] & real[:, None, :]  # padding rows see the real tokens
    return visible


def additive_mask(visible: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L, L) bool -> (B, 1, L, L) float: 0 where visible, finfo(dtype).min where hidden (the paper's M)."""
    mask = torch.zeros(visible.shape[0], 1, *visible.shape[1:], dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)  # finite: a row never turns into NaN


def collate(
    trees: list[SentenceTree],
    pad_id: int,
    visible_matrix: bool = True,
    soft_positions: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    position_offset: int = 0,
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest tree: input_ids, position_ids, token_type_ids (B, L), attention_mask (B, 1, L, L).

    `dtype` is the model's floating dtype (the mask is added to its attention scores). `position_offset` is
    added to every position: RoBERTa-style models number positions from padding_idx + 1.
    """
    width = max(len(t.input_ids) for t in trees)
    batch = len(trees)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    position_ids = torch.arange(width).repeat(batch, 1)  # hard positions; padding keeps them
    branch_ids = torch.full((batch, width), -1, dtype=torch.long)
    mention_ids = torch.zeros((batch, width), dtype=torch.long)
    real = torch.zeros((batch, width), dtype=torch.bool)
    for b, tree in enumerate(trees):
        n = len(tree.input_ids)
        input_ids[b, :n] = torch.tensor(tree.input_ids)
        if soft_positions:
            position_ids[b, :n] = torch.tensor(tree.soft_positions)
        branch_ids[b, :n] = torch.tensor(tree.branch_ids)
        mention_ids[b, :n] = torch.tensor(tree.mention_ids)
        real[b, :n] = True
    if visible_matrix:
        visible = visibility(branch_ids, mention_ids, real)
    else:  # knowledge noise: every real token sees every real token
        visible = real[:, None, :].expand(batch, width, width)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": additive_mask(visible, dtype).to(device),
        "position_ids": (position_ids + position_offset).to(device),
        "token_type_ids": torch.zeros((batch, width), dtype=torch.long, device=device),
    }


def sentences_per_second(builder: SentenceTreeBuilder, texts: list[str], batch_size: int = 32) -> float:
    """Throughput of building model inputs (trees and masks) for `texts`, in batches; for reports and tests."""
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        builder.encode(texts[i : i + batch_size])
    return len(texts) / max(time.perf_counter() - start, 1e-9)
