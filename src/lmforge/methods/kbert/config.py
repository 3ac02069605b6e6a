"""Options of K-BERT (Liu et al., AAAI 2020, "K-BERT: Enabling Language Representation with Knowledge Graph").

A BERT-family classifier is fine-tuned in full on sentence trees: the graph's triples hung on the
entities of each sentence, read with soft positions under the visible matrix (tree.py). The defaults
are the paper's model; the two switches turn off one part each, as in the paper's ablation study (without the
visible matrix: "knowledge noise"; without soft positions: hard positions).
"""

from dataclasses import dataclass

from lmforge.config import option


@dataclass
class KbertConfig:
    graph: str = option(
        "wordnet", "knowledge graph: builtin `wordnet` or `conceptnet`, or a TSV file of head<TAB>relation<TAB>tail"
    )
    max_entities: int = option(2, "branches hung on each entity at most (the paper's code: 2)", min=0)
    lemmas: bool = option(True, "also match entities by their plural-stripped lemma (`dogs` -> `dog`)")
    visible_matrix: bool = option(
        True, "mask-self-attention under the visible matrix; false lets every token see all (knowledge noise)"
    )
    soft_positions: bool = option(
        True, "soft positions (branches continue from their entity); false numbers the tokens 0..L-1 (hard)"
    )
    choices: bool = option(
        False,
        "multiple choice: a text is 'question (A) choice (B) choice ...'; each question-choice tree gets one "
        "score and a question's scores compete (choices.py)",
    )
