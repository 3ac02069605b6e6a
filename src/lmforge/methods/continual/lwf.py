"""Learning without Forgetting (Li and Hoiem 2017, "Learning without Forgetting", TPAMI, eq. 2-3): while a
new task trains, the model's outputs for the old tasks, on the new task's inputs, are held to those the model
gave before the new task started (the teacher: its recorded outputs, or a frozen copy of it).

Eq. 3 softens both distributions with a temperature T, y'(i) = y(i)^(1/T) / sum_j y(j)^(1/T), which for
softmax outputs is softmax(logits / T); eq. 2 is the cross-entropy -sum_i y'_teacher(i) log y'_student(i). The
paper uses T = 2 and weighs this loss by lambda_o = 1 beside the new task's loss (section 3).

What `distillation_loss` returns, and how it differs from eq. 2:
- the KL divergence KL(teacher_T || student_T) rather than the cross-entropy. They differ by the teacher's
  entropy, a constant for the student, so their gradients are the same; the KL is 0 when the student agrees
  with the teacher, which makes the logged value readable (the cross-entropy there is the teacher's entropy);
- multiplied by T^2, as Hinton et al. (2015, "Distilling the Knowledge in a Neural Network", section 2) do so
  that the soft targets' gradients keep their size whatever T (they shrink as 1/T^2). Li and Hoiem do not
  scale: with T = 2 this loss is 4 times theirs, so `hinton_scale=False` with lambda_o = 1 is their setting;
- the mean over examples (rows of the logits; for a causal LM each token position is a row, and `mask`
  says which positions count).
For a class-incremental head, `old_classes = k` keeps the first k logits of both (the classes the teacher
knew) before the softmax, as LwF's old-task outputs are the old head's only.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    old_classes: int | None = None,
    mask: torch.Tensor | None = None,
    hinton_scale: bool = True,
) -> torch.Tensor:
    """T^2 (or 1) * KL(softmax(teacher / T) || softmax(student / T)), averaged over rows; the teacher gets no
    gradient. Logits are (..., classes); `mask` (bool, the leading shape) picks the rows that count."""
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be positive, not {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    if old_classes is not None:
        student_logits, teacher_logits = student_logits[..., :old_classes], teacher_logits[..., :old_classes]
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_row = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(-1)
    if mask is not None:
        per_row = per_row[mask]
    loss = per_row.mean()
    return loss * temperature**2 if hinton_scale else loss
