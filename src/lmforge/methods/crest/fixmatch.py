"""FixMatch's unlabeled loss, the semi-supervised learner CReST trains in every generation.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS
2020, eq. 4 and Algorithm 1: for each unlabeled example, the model's prediction on a weak augmentation,
q = p(y | weak(u)), gives a hard pseudo-label argmax(q) when max(q) reaches the threshold tau (0.95);
the loss is the cross-entropy of the prediction on a strong augmentation against it,

    loss_u = (1 / (mu B)) * sum_b 1[max(q_b) >= tau] * H(argmax(q_b), p(y | strong(u_b))),

averaged over all mu B unlabeled examples of the batch, the masked ones counting as zero. No gradient
flows through q. CReST+ first rescales q by distribution alignment (rebalance.py, `align`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class UnlabeledLoss:
    loss: torch.Tensor
    """scalar: the masked cross-entropy averaged over every unlabeled example"""
    pseudo_labels: torch.Tensor
    """(U,) argmax of the (aligned) weak prediction"""
    mask: torch.Tensor
    """(U,) 1.0 where the weak prediction reached the threshold"""


def unlabeled_loss(
    weak_logits: torch.Tensor,
    strong_logits: torch.Tensor,
    threshold: float = 0.95,
    weak_probs_transform=None,
) -> UnlabeledLoss:
    """FixMatch's loss_u from the logits (U, L) of the weak and the strong view of the same U texts.

    `weak_probs_transform`, when given, maps the weak probabilities (U, L) before the pseudo-label and
    the threshold are taken (CReST+'s distribution alignment)."""
    with torch.no_grad():
        probs = torch.softmax(weak_logits.detach().float(), dim=-1)
        if weak_probs_transform is not None:
            probs = weak_probs_transform(probs)
        confidence, pseudo_labels = probs.max(dim=-1)
        mask = (confidence >= threshold).float()
    per_example = F.cross_entropy(strong_logits.float(), pseudo_labels, reduction="none")
    return UnlabeledLoss((per_example * mask).mean(), pseudo_labels, mask)
