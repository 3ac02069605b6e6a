"""K-BERT (Liu et al., AAAI 2020): knowledge-graph triples injected into the input of a BERT-family encoder.

`graph.py` loads the knowledge graph (builtin `wordnet`, `conceptnet`, or a TSV file) and renders names as
words; `tree.py` builds sentence trees, soft positions and the visible matrix as model inputs. Nothing is
imported here, so that the registry (and `lmforge list`) reads `config.py` without loading torch.
"""
