"""CReST and CReST+ (Wei et al., CVPR 2021): class-rebalancing self-training for imbalanced semi-supervised
classification. See docs/crest.md."""
