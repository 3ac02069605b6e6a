"""Pre-softmax attention scores of a BERT-family encoder, without forking its code.

TinyBERT's attention loss (Jiao et al. 2020, equation 7) compares the attention matrices
A = Q K^T / sqrt(d_k) *before* the softmax. transformers returns only the probabilities (and none
under sdpa), so forward hooks record the outputs of every self-attention layer's `query` and `key`
projections, and the scores are computed from them: (B, L, H * d) -> (B, H, L, d) per side, then
(B, H, L, L). The padding mask is not added: losses exclude padded positions themselves.
"""

from __future__ import annotations

import torch
from torch import nn


def self_attention_layers(model: nn.Module) -> list[nn.Module]:
    """Every BERT-style self-attention module (one with `query` and `key` linears), in layer order."""
    found = [
        m
        for _, m in model.named_modules()
        if isinstance(getattr(m, "query", None), nn.Linear)
        and isinstance(getattr(m, "key", None), nn.Linear)
        and hasattr(m, "attention_head_size")
    ]
    if not found:
        raise ValueError(f"{type(model).__name__}: no BERT-style self-attention layers (query / key linears)")
    return found


class AttentionScores:
    """Records the query and key projections of each forward pass; `pop()` returns the scores.

    with AttentionScores(model) as attention:
        model(**inputs)
        scores = attention.pop()   # list over layers of (B, H, L, L), differentiable
    """

    def __init__(self, model: nn.Module):
        self.layers = self_attention_layers(model)
        self._queries: dict[int, torch.Tensor] = {}
        self._keys: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> AttentionScores:
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.query.register_forward_hook(self._recorder(self._queries, i)))
            self._handles.append(layer.key.register_forward_hook(self._recorder(self._keys, i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _recorder(store: dict, index: int):
        def hook(module, inputs, output):
            store[index] = output  # (B, L, H * d)

        return hook

    def pop(self) -> list[torch.Tensor]:
        """Scores of the last forward pass, one (B, H, L, L) tensor per layer; clears the record."""
        if len(self._queries) != len(self.layers) or len(self._keys) != len(self.layers):
            raise RuntimeError("no complete forward pass recorded since the last pop()")
        scores = []
        for i, layer in enumerate(self.layers):
            heads, size = layer.num_attention_heads, layer.attention_head_size
            q, k = self._queries[i], self._keys[i]
            batch, length = q.shape[:2]
            q = q.view(batch, length, heads, size).transpose(1, 2)  # (B, H, L, d)
            k = k.view(batch, length, heads, size).transpose(1, 2)
            scores.append(q @ k.transpose(-1, -2) * size**-0.5)  # (B, H, L, L)
        self._queries.clear()
        self._keys.clear()
        return scores
