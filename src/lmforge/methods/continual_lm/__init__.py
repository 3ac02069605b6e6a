"""Continual pretraining of a causal LM (Wu et al. 2024 survey, section 3). See docs/continual_lm.md."""
