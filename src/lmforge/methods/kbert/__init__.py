"""K-BERT (Liu et al., AAAI 2020): knowledge-graph triples injected into the input of a BERT-family encoder.

`graph.py` loads the knowledge graph (builtin `wordnet`, `conceptnet`, or a TSV file) and renders names as
words; `tree.py` builds sentence trees, soft positions and the visible matrix as model inputs.
"""

from lmforge.methods.kbert.graph import BUILTIN_GRAPHS, KnowledgeGraph, Triple, load_graph
from lmforge.methods.kbert.tree import SentenceTree, SentenceTreeBuilder, collate

__all__ = [
    "BUILTIN_GRAPHS",
    "KnowledgeGraph",
    "SentenceTree",
    "SentenceTreeBuilder",
    "Triple",
    "collate",
    "load_graph",
]
