"""AdaLoRA's SVD-form adapter (Zhang et al. 2023, equation 3): W = W0 + P Lambda Q.

P: (out, r) and Q: (r, in) start from N(0, 0.02) and Lambda: (r,) from zero, so training starts
from the pretrained function; the update is scaled by lora_alpha / (init_r + 1e-5), init_r the
rank before any pruning (the official code's and peft's `ranknum`, epsilon included). Pruning
a triplet i sets Lambda_i to zero (a mask, not a deletion), so it can come back at a later
re-allocation. Parameter names follow peft (lora_A = Q, lora_E = Lambda, lora_B = P) so that the
PEFT adapter format is a renaming-free copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from lmforge.adapters.lora import AdapterLinear
from lmforge.methods.adalora.config import ORTH_REG_FORMS


class SVDLinear(AdapterLinear):
    """y = base(x) + scaling * dropout(x) Q^T diag(Lambda) P^T."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, init_r: int | None = None):
        super().__init__()
        self.base = base
        self.r = r  # may be 0 for a matrix whose every triplet was pruned
        self.scaling = alpha / ((init_r if init_r is not None else r) + 1e-5)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dtype = base.weight.dtype
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, dtype=dtype) * 0.02)  # Q: (r, in)
        self.lora_E = nn.Parameter(torch.zeros(r, 1, dtype=dtype))  # Lambda: (r, 1)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, r, dtype=dtype) * 0.02)  # P: (out, r)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ (self.lora_A * self.lora_E)) * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.lora_dropout(x) @ (self.lora_A * self.lora_E).T @ self.lora_B.T) * self.scaling

    def rank(self) -> int:
        """Triplets still in use (non-zero singular values)."""
        return int((self.lora_E != 0).sum())


def svd_layers(model: nn.Module) -> dict[str, SVDLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SVDLinear)}


def orthogonal_penalty(layers: Iterable[SVDLinear], form: str = "squared") -> torch.Tensor:
    """Paper equation 4, averaged over the P and Q matrices (as the official code and peft average).

    form "squared": R(P, Q) = ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2, the paper's equation 4;
    form "official": the plain, unsquared Frobenius norms, as the official code
    (QingruZhang/AdaLoRA, loralib/adalora.py, `compute_orth_regu`) and peft compute it. At
    initialisation (P, Q ~ N(0, 0.02)) the two differ in strength, so gamma means different things
    under each (docs/adalora.md gives the factor for MiniLM's shapes).

    Matrices of the same shape are stacked and multiplied in one batched matmul: a BERT layer has
    only a few shapes, and this is about 3x cheaper on CPU than one small matmul per matrix."""
    if form not in ORTH_REG_FORMS:
        raise ValueError(f"orthogonal penalty form {form!r}: expected one of {ORTH_REG_FORMS}")
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for layer in layers:
        groups["Q", layer.lora_A.shape].append(layer.lora_A)  # (r, in)
        groups["P", layer.lora_B.shape].append(layer.lora_B)  # (out, r)
    total, count = 0.0, 0
    for (kind, _), matrices in groups.items():
        stacked = torch.stack(matrices)  # (n, r, in) or (n, out, r)
        gram = stacked @ stacked.transpose(1, 2) if kind == "Q" else stacked.transpose(1, 2) @ stacked  # (n, r, r)
        identity = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
        squared_norms = ((gram - identity) ** 2).sum(dim=(1, 2))  # (n,) ||.||_F^2 per matrix
        total = total + (squared_norms.sum() if form == "squared" else squared_norms.sqrt().sum())
        count += len(matrices)
    return total / count
