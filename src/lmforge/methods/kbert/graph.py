"""K-BERT's knowledge graph: triples read from files, with entity and relation names rendered as words.

K-BERT (Liu et al., AAAI 2020, "K-BERT: Enabling Language Representation with Knowledge Graph")
injects triples (head, relation, tail) of a knowledge graph K into a sentence (section 3, "Knowledge
layer": K-Query looks up the triples whose head is an entity of the sentence, K-Inject hangs each
relation and tail on that entity as a branch). The paper's graphs are Chinese (CN-DBpedia, HowNet,
MedicalKG); the branch is the relation and tail text, read by the encoder as ordinary words. For an
English word-piece encoder this module renders every name as English words:

- entities: a WordNet synset name loses its sense suffix (`dog.n.01` -> `dog`, `lake_st._clair.n.01`
  -> `lake st. clair`), a ConceptNet URI its prefix and part of speech (`/c/en/ice_cream/n` -> `ice cream`),
  and underscores become spaces;
- relations: through the table below, matched without case, underscores or spaces (`_hypernym`,
  `Hypernym` and `hypernym` are one key); a relation not in the table is split into lower-case words
  (`LocatedNear` -> `located near`, `_has_part` -> `has part`).

| graph | relation | words |
|---|---|---|
| WordNet | `_hypernym` | is a kind of |
| WordNet | `_instance_hypernym` | is an instance of |
| WordNet | `_has_part` | has part |
| WordNet | `_member_meronym` | has member |
| WordNet | `_synset_domain_topic_of` | belongs to the topic |
| WordNet | `_member_of_domain_region` | has the regional term |
| WordNet | `_member_of_domain_usage` | has the usage example |
| WordNet | `_similar_to` | is similar to |
| WordNet | `_also_see` | see also |
| WordNet | `_verb_group` | is a verb like |
| WordNet | `_derivationally_related_form` | is a word form of |
| ConceptNet | `IsA`, `NotIsA` | is a, is not a |
| ConceptNet | `InstanceOf`, `InheritsFrom` | is an instance of, inherits from |
| ConceptNet | `PartOf`, `HasA`, `NotHasA` | is part of, has, does not have |
| ConceptNet | `MadeOf`, `NotMadeOf` | is made of, is not made of |
| ConceptNet | `HasProperty`, `NotHasProperty` | is, is not |
| ConceptNet | `CapableOf`, `NotCapableOf` | can, cannot |
| ConceptNet | `UsedFor`, `AtLocation`, `LocatedNear` | is used for, is found at, is near |
| ConceptNet | `LocationOfAction` | is a place to |
| ConceptNet | `Causes`, `CausesDesire` | causes, makes you want to |
| ConceptNet | `Desires`, `NotDesires`, `DesireOf` | wants, does not want, is wanted by |
| ConceptNet | `MotivatedByGoal`, `HasPrerequisite` | is done because of, requires |
| ConceptNet | `HasSubevent`, `HasFirstSubevent`, `HasLastSubevent` | involves, starts with, ends with |
| ConceptNet | `ReceivesAction`, `CreatedBy` | can be, is created by |
| ConceptNet | `DefinedAs`, `SymbolOf`, `RelatedTo` | is defined as, is a symbol of, is related to |
| ConceptNet | `HasPainIntensity`, `HasPainCharacter` | has pain intensity, has pain character |

The order of the table is also the order in which an entity's branches are chosen (tree.py keeps
`max_entities` of them): the WordNet relations most like a definition (hypernyms) come first, the
derivational links, which mostly repeat the word itself, last.

Builtin graphs (`load_graph(name)`):
- `wordnet`: WN18RR's train + valid + test triples (`datasets/wn18rr`, readable synset names).
- `conceptnet`: the true triples (label 1) of the CKBC evaluation sets of Li et al. 2016
  (`datasets/conceptnet`, ConceptNet 5 / Open Mind Common Sense, English).
A user graph is a UTF-8 TSV file of `head<TAB>relation<TAB>tail` lines (blank lines and lines starting
with `#` are skipped). Rendering can make triples equal (two senses of `dog` become one name) or make a
triple point at its own head (`call.v.03 _verb_group call.v.09`); both are dropped, and counted.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.core.console import say
from lmforge.data.builtin import DATA_DIR
from lmforge.errors import UserError

# Keys are normalised by `_relation_key` (lower case, letters only); the values are the words of a branch.
RELATION_WORDS: dict[str, str] = {
    # WordNet (WN18RR)
    "hypernym": "is a kind of",
    "instancehypernym": "is an instance of",
    "haspart": "has part",
    "membermeronym": "has member",
    "synsetdomaintopicof": "belongs to the topic",
    "memberofdomainregion": "has the regional term",
    "memberofdomainusage": "has the usage example",
    "similarto": "is similar to",
    "alsosee": "see also",
    "verbgroup": "is a verb like",
    "derivationallyrelatedform": "is a word form of",
    # ConceptNet 5 / OMCS
    "isa": "is a",
    "notisa": "is not a",
    "instanceof": "is an instance of",
    "inheritsfrom": "inherits from",
    "partof": "is part of",
    "hasa": "has",
    "nothasa": "does not have",
    "madeof": "is made of",
    "notmadeof": "is not made of",
    "hasproperty": "is",
    "nothasproperty": "is not",
    "capableof": "can",
    "notcapableof": "cannot",
    "usedfor": "is used for",
    "atlocation": "is found at",
    "locatednear": "is near",
    "locationofaction": "is a place to",
    "causes": "causes",
    "causesdesire": "makes you want to",
    "desires": "wants",
    "notdesires": "does not want",
    "desireof": "is wanted by",
    "motivatedbygoal": "is done because of",
    "hasprerequisite": "requires",
    "hassubevent": "involves",
    "hasfirstsubevent": "starts with",
    "haslastsubevent": "ends with",
    "receivesaction": "can be",
    "createdby": "is created by",
    "definedas": "is defined as",
    "symbolof": "is a symbol of",
    "relatedto": "is related to",
    "haspainintensity": "has pain intensity",
    "haspaincharacter": "has pain character",
}
_RELATION_RANK = {key: rank for rank, key in enumerate(RELATION_WORDS)}

BUILTIN_GRAPHS = ("wordnet", "conceptnet")
_WORD = re.compile(r"\w+|[^\w\s]")
_SYNSET_SUFFIX = re.compile(r"\.[nvasr]\.\d{2}$")  # `dog.n.01`: lemma, part of speech, sense number
_CONCEPTNET_URI = re.compile(r"^/c/[a-z]+/([^/]+)(?:/.*)?$")  # `/c/en/dog/n/...`: language, term, rest


@dataclass(frozen=True)
class Triple:
    """One fact, names already rendered as words: `Triple("dog", "is a kind of", "canine")`."""

    head: str
    relation: str
    tail: str
    # The relation's place in RELATION_WORDS (unknown relations after all known ones): an ordering key, not
    # part of the fact, so two triples that differ only in it are equal.
    relation_rank: int = field(default=0, compare=False)


@dataclass(frozen=True)
class KnowledgeGraph:
    """Triples in reading order, deduplicated; `branches` groups them by head for the knowledge layer."""

    name: str
    triples: tuple[Triple, ...]

    @property
    def entities(self) -> set[str]:
        return {t.head for t in self.triples} | {t.tail for t in self.triples}

    @property
    def relations(self) -> set[str]:
        return {t.relation for t in self.triples}

    @functools.cached_property
    def branches(self) -> dict[str, tuple[str, ...]]:
        """Head key -> its branch texts ("relation tail"), in relation-table order, then alphabetical.

        The key is the head's lower-cased words (`split_words`) joined by single spaces, the form in which
        the knowledge layer looks words of a sentence up (`yo-yo` -> "yo - yo").

        Sorted, never in set or hash order, so that the branches kept per entity are the same in every
        run and process (the original code took `list(set)[:max_entities]`, which is not).
        """
        grouped: dict[str, list[Triple]] = {}
        for triple in self.triples:
            grouped.setdefault(" ".join(split_words(triple.head.lower())), []).append(triple)
        return {
            head: tuple(
                f"{t.relation} {t.tail}" for t in sorted(group, key=lambda t: (t.relation_rank, t.relation, t.tail))
            )
            for head, group in sorted(grouped.items())
        }


def split_words(text: str) -> list[str]:
    """Words and single punctuation marks, as BERT's basic tokenizer splits text before word pieces."""
    return _WORD.findall(text)


def relation_words(name: str) -> str:
    """`_hypernym` -> "is a kind of"; an unknown `LocatedAbove` -> "located above"."""
    known = RELATION_WORDS.get(_relation_key(name))
    if known is not None:
        return known
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ")
    return " ".join(spaced.lower().split())


def entity_words(name: str) -> str:
    """`land_reform.n.01` -> "land reform"; `/c/en/ice_cream/n` -> "ice cream"; `pet store` unchanged."""
    name = name.strip()
    uri = _CONCEPTNET_URI.match(name)
    if uri:
        name = uri.group(1)
    name = _SYNSET_SUFFIX.sub("", name)
    return " ".join(name.replace("_", " ").split())


def load_graph(spec: str) -> KnowledgeGraph:
    """A builtin graph by name (`wordnet`, `conceptnet`) or a user's TSV file of head, relation, tail."""
    if spec in BUILTIN_GRAPHS:
        return _builtin_graph(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"knowledge graph {spec!r}: not a builtin graph ({', '.join(BUILTIN_GRAPHS)}) and not a file")
    return read_tsv_graph(path)


def read_tsv_graph(path: Path, name: str | None = None) -> KnowledgeGraph:
    """Triples from `head<TAB>relation<TAB>tail` lines; any malformed line is a UserError naming file and line."""
    rows = []
    for line_number, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 3:
            raise UserError(
                f"{path}:{line_number}: expected 3 tab-separated columns (head, relation, tail), found {len(fields)}"
            )
        head, relation, tail = (field.strip() for field in fields)
        if not (head and relation and tail):
            raise UserError(f"{path}:{line_number}: empty head, relation or tail (expected head<TAB>relation<TAB>tail)")
        rows.append((head, relation, tail))
    return _graph(name or str(path), rows, source=str(path))


@functools.cache
def _builtin_graph(name: str) -> KnowledgeGraph:
    # Cached: the graph is immutable and WordNet's 93,003 lines take a noticeable part of a second to parse.
    if name == "wordnet":
        rows = []
        for split in ("train", "valid", "test"):
            rows += [tuple(line.split("\t")) for _, line in _lines(DATA_DIR / "wn18rr" / f"{split}.txt")]
        return _graph(name, rows, source="datasets/wn18rr")
    rows = []
    for split in ("dev1", "dev2", "test"):
        for _, line in _lines(DATA_DIR / "conceptnet" / f"new_omcs_{split}.txt"):
            relation, head, tail, label = line.split("\t")  # CKBC's column order; label 1 = true assertion
            if label == "1":
                rows.append((head, relation, tail))
    return _graph(name, rows, source="datasets/conceptnet")


def _graph(name: str, rows: list[tuple[str, str, str]], source: str) -> KnowledgeGraph:
    # Names repeat across many triples (WordNet: 93,003 rows, 41,105 names), so each is rendered once; these
    # two tables are only looked up, never iterated, so the order of the sets they are built from is harmless.
    entities = {n: entity_words(n) for n in {r[0] for r in rows} | {r[2] for r in rows}}
    relations = {
        n: (relation_words(n), _RELATION_RANK.get(_relation_key(n), len(RELATION_WORDS))) for n in {r[1] for r in rows}
    }
    seen: set[tuple[str, str, str]] = set()  # membership only; the order kept is the reading order
    triples: list[Triple] = []
    self_loops = 0
    for head, relation, tail in rows:
        head, tail = entities[head], entities[tail]
        words, rank = relations[relation]
        if head.lower() == tail.lower():
            self_loops += 1
        elif (head, words, tail) not in seen:
            seen.add((head, words, tail))
            triples.append(Triple(head, words, tail, rank))
    if not triples:
        raise UserError(f"knowledge graph {source}: no triples (expected head<TAB>relation<TAB>tail lines)")
    duplicates = len(rows) - self_loops - len(triples)
    if duplicates or self_loops:
        say(
            f"knowledge graph {name}: {len(rows)} triples read, {len(triples)} kept; dropped {duplicates} that "
            f"duplicate another once names are rendered and {self_loops} whose tail renders as its head"
        )
    return KnowledgeGraph(name, tuple(triples))


def _lines(path: Path):
    """(line number, line) for the non-blank, non-comment lines of a UTF-8 text file."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise UserError(f"knowledge graph {path}: cannot read it ({e.strerror})") from None
    for line_number, raw in enumerate(text.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise UserError(f"{path}:{line_number}: not UTF-8 text (expected head<TAB>relation<TAB>tail)") from None
        if line.strip() and not line.startswith("#"):
            yield line_number, line


def _relation_key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())
