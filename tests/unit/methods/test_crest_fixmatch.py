"""FixMatch's unlabeled loss (methods/crest/fixmatch.py) against a hand computation."""

import math

import pytest
import torch

from lmforge.methods.crest.fixmatch import unlabeled_loss


def test_the_loss_counts_only_confident_weak_predictions_and_averages_over_all():
    weak = torch.tensor([[4.0, 0.0], [0.1, 0.0], [0.0, 5.0]])  # confidences 0.982, 0.525, 0.993
    strong = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0]], requires_grad=True)
    out = unlabeled_loss(weak, strong, threshold=0.95)
    assert out.pseudo_labels.tolist() == [0, 0, 1] and out.mask.tolist() == [1.0, 0.0, 1.0]
    # H(0, [1, 0]) = log(1 + e^-1); H(1, [0, 0]) = log 2; the masked middle row counts as 0, divided by 3
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    assert strong.grad[1].abs().sum() == 0 and strong.grad[0].abs().sum() > 0  # masked rows get no gradient


def test_no_gradient_flows_through_the_weak_view():
    weak = torch.tensor([[4.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0]], requires_grad=True)
    unlabeled_loss(weak, strong, threshold=0.5).loss.backward()
    assert weak.grad is None and strong.grad is not None


def test_the_transform_acts_before_the_pseudo_label_and_the_threshold():
    weak = torch.tensor([[0.2, 0.0]])  # p = (0.55, 0.45): class 0, below 0.95
    strong = torch.zeros(1, 2)
    flipped = unlabeled_loss(weak, strong, threshold=0.9, weak_probs_transform=lambda p: torch.tensor([[0.05, 0.95]]))
    assert flipped.pseudo_labels.tolist() == [1] and flipped.mask.tolist() == [1.0]
    assert unlabeled_loss(weak, strong, threshold=0.9).mask.tolist() == [0.0]
