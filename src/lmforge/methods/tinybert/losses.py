"""TinyBERT's distillation losses (Jiao et al. 2020, section 3.1, equations 6-12).

Shapes: B batch, L tokens, H heads, d_s / d_t student / teacher hidden sizes. `mask` is the (B, L)
attention mask (1 = real token); every loss averages over real tokens only, so padding, which
differs between batches, never enters a loss.

- Layer mapping (section 3.1): student layer m (1..M) learns from teacher layer g(m); g(0) = 0
  is the embedding layer. Uniform by default, g(m) = m N / M.
- Attention, eq. 7: MSE between pre-softmax scores of each head, over (query, key) pairs of real tokens.
- Hidden states, eq. 8: MSE(H_s W_h, H_t), W_h a learned (d_s, d_t) projection shared by the layers.
- Embeddings, eq. 9: MSE(E_s W_e, E_t), W_e its own projection.
- Prediction, eq. 10: soft cross-entropy -softmax(z_t / t) . log_softmax(z_s / t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import UserError


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """g(m) for m = 1..M: the teacher layer (1-based) each student layer learns from."""
    if teacher_layers % student_layers:
        raise UserError(
            f"tinybert: the uniform layer map needs the teacher's {teacher_layers} layers to be a multiple of the "
            f"student's {student_layers}; set tinybert.layer_map explicitly"
        )
    step = teacher_layers // student_layers
    return [m * step for m in range(1, student_layers + 1)]


def check_layer_map(layer_map: list[int], student_layers: int, teacher_layers: int) -> list[int]:
    if len(layer_map) != student_layers or not all(1 <= g <= teacher_layers for g in layer_map):
        raise UserError(
            f"tinybert.layer_map {layer_map}: expected {student_layers} teacher layers, each in 1..{teacher_layers}"
        )
    return layer_map


def layer_map_for(options, student_layers: int, teacher_layers: int) -> list[int]:
    """`tinybert.layer_map` when set, else the uniform map."""
    if options.layer_map:
        return check_layer_map(options.layer_map, student_layers, teacher_layers)
    return uniform_layer_map(student_layers, teacher_layers)


class Projections(nn.Module):
    """W_e and W_h: student hidden size -> teacher hidden size."""

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.embedding = nn.Linear(student_hidden, teacher_hidden)
        self.hidden = nn.Linear(student_hidden, teacher_hidden)


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens of (B, L, D) tensors; mask (B, L)."""
    weight = mask.to(student.dtype).unsqueeze(-1)  # (B, L, 1)
    return (((student - teacher) ** 2) * weight).sum() / (weight.sum() * student.shape[-1])


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Equation 7 for one layer: scores (B, H, L, L), averaged over heads and real (query, key) pairs."""
    real = mask.to(student.dtype)
    pairs = (real[:, :, None] * real[:, None, :]).unsqueeze(1)  # (B, 1, L, L)
    return (((student - teacher) ** 2) * pairs).sum() / (pairs.sum() * student.shape[1])


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Equation 10, averaged over the batch: logits (B, C)."""
    targets = F.softmax(teacher_logits / temperature, dim=-1)
    return -(targets * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


def intermediate_losses(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    student_scores: list[torch.Tensor],
    teacher_scores: list[torch.Tensor],
    mask: torch.Tensor,
    layer_map: list[int],
    projections: Projections,
) -> dict[str, torch.Tensor]:
    """Embedding, then per student layer m: attention and hidden-state losses against teacher layer g(m).

    `*_hidden` are Hugging Face `hidden_states` (embeddings first, then each layer's output);
    `*_scores` are per-layer pre-softmax attention scores. Returns named losses ("embedding",
    "attention/1", "hidden/1", ...), to be summed for training and logged one by one.
    """
    losses = {"embedding": masked_mse(projections.embedding(student_hidden[0]), teacher_hidden[0], mask)}
    for m, g in enumerate(layer_map, start=1):
        losses[f"attention/{m}"] = attention_loss(student_scores[m - 1], teacher_scores[g - 1], mask)
        losses[f"hidden/{m}"] = masked_mse(projections.hidden(student_hidden[m]), teacher_hidden[g], mask)
    return losses
