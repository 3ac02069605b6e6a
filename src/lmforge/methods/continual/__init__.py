"""Continual learning for language models (Wu et al. 2024 survey). See docs/continual.md."""
