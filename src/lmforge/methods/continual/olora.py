"""O-LoRA (Wang et al., Findings of EMNLP 2023, "Orthogonal Subspace Learning for Language Model Continual
Learning"): each task trains a new LoRA, and its update's input subspace, spanned by the rows of its A
(r x in), is pushed to be orthogonal to those of every earlier task's frozen A. With O_{i,t} = A_i A_t^T
(r_i x r_t; the paper writes A as in x r, hence its A_i^T A_t), the training loss of task t is

    L = L_task + lambda_1 * sum_{i<t} L_orth(A_i, A_t) + lambda_2 * L2(this task's LoRA A and B)

The paper writes L_orth(A_i, A_t) = sum_{j,k} |O_{i,t}[j,k]|^2. The official code (cmnfriend/O-LoRA,
src/uie_trainer_lora.py, `training_step`) sums absolute values instead: torch.abs(torch.mm(lora_A,
loranew_A.T)).sum(), over the layers whose names match, with the earlier tasks' A matrices concatenated
into one lora_A of rank r_sum (src/peft/tuners/lora.py), which gives the same sum as one term per task.
Its L2 term is torch.norm(param, p=2), the Frobenius norm (not squared), of each of the new task's
`loranew_` A and B, summed. The defaults here are the code's, which produced the paper's numbers:
absolute values (`squared=True` gives the paper's formula), lambda_1 = 0.5 and lambda_2 = 0
(src/run_uie_lora.py's `lamda_1`/`lamda_2` defaults, and every scripts/order_*.sh).

Earlier tasks' A matrices get no gradient here (they are detached): their LoRAs are frozen, and stay in the
model's forward (the code keeps them as the frozen lora_A/lora_B; merging a frozen B A into the base weight
computes the same function). Layers are matched by name, as `lora_A_matrices(model)` returns them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from lmforge.adapters.lora import lora_layers

LAMBDA_1 = 0.5  # the orthogonality loss's weight (official code's default and scripts)
LAMBDA_2 = 0.0  # the L2 term's weight (official code's default and scripts)


def lora_A_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: its LoRA A (r x in)}: the live parameters (for this task) or, copied with
    `frozen_copy`, a finished task's."""
    return {name: layer.lora_A for name, layer in lora_layers(model).items()}


def frozen_copy(matrices: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: a.detach().clone() for name, a in matrices.items()}


def orthogonality_loss(
    current_As: Mapping[str, torch.Tensor],
    previous_As: Sequence[Mapping[str, torch.Tensor]],
    squared: bool = False,
) -> torch.Tensor:
    """sum over earlier tasks i and their layers of sum_{j,k} |O_{i,t}[j,k]| (or its square), O = A_i A_t^T.

    `previous_As` holds one {layer name: A} per finished task; each of its layers must be in `current_As`.
    Only `current_As` gets a gradient.
    """
    device = next(iter(current_As.values())).device if current_As else torch.device("cpu")
    total = torch.zeros((), device=device)
    for task_index, task_As in enumerate(previous_As):
        for name, previous in task_As.items():
            if name not in current_As:
                raise ValueError(f"earlier task {task_index} has a LoRA on {name}, the current model does not")
            current = current_As[name]
            if previous.shape[-1] != current.shape[-1]:
                raise ValueError(f"{name}: A of input size {previous.shape[-1]} against {current.shape[-1]}")
            overlap = previous.detach().to(current.device, current.dtype) @ current.T  # (r_i, r_t)
            total = total + (overlap.pow(2) if squared else overlap.abs()).sum()
    return total


def l2_loss(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum of the Frobenius norms (not squared) of `params`: the new task's LoRA A and B, as the code does."""
    norms = [torch.linalg.vector_norm(p) for p in params]
    return torch.stack(norms).sum() if norms else torch.zeros(())
