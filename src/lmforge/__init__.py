"""lmforge: adapt pre-trained language models with published methods on one small core."""

__version__ = "0.1.0"
