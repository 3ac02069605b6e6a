"""LwF's distillation loss: a value computed by hand, the KL's relation to the paper's cross-entropy, zero
loss and zero gradient when the student equals the teacher, the old-class slice and the token mask."""

import math

import pytest
import torch

from lmforge.methods.continual.lwf import distillation_loss


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_hand_value_and_the_papers_cross_entropy():
    # student logits [1, 0], teacher [0, 1], T = 2: softened to softmax([0.5, 0]) and softmax([0, 0.5])
    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p_student, p_teacher = softmax([0.5, 0.0]), softmax([0.0, 0.5])
    kl = sum(t * math.log(t / s) for t, s in zip(p_teacher, p_student))
    assert kl == pytest.approx(0.5 * math.tanh(0.25))  # (p - q) * log(p / q) with log(p / q) = 0.5
    assert distillation_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    assert distillation_loss(student, teacher, 2.0, hinton_scale=False).item() == pytest.approx(kl, rel=1e-6)
    # Li and Hoiem's eq. 2 is the cross-entropy: the KL plus the teacher's entropy
    cross_entropy = -sum(t * math.log(s) for t, s in zip(p_teacher, p_student))
    teacher_entropy = -sum(t * math.log(t) for t in p_teacher)
    assert kl == pytest.approx(cross_entropy - teacher_entropy)


def test_the_mean_is_over_examples():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    one = distillation_loss(student[:1], teacher[:1])
    assert distillation_loss(student, teacher).item() == pytest.approx(one.item() / 2)


def test_zero_loss_and_zero_gradient_when_the_student_equals_the_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(4, 5)
    student = teacher.clone().requires_grad_(True)
    loss = distillation_loss(student, teacher, temperature=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert student.grad.abs().max().item() < 1e-6
    # away from the teacher: positive, and the teacher gets no gradient
    teacher = teacher.clone().requires_grad_(True)
    moved = (teacher.detach() + torch.randn(4, 5)).requires_grad_(True)
    loss = distillation_loss(moved, teacher)
    loss.backward()
    assert loss.item() > 0 and moved.grad.abs().sum() > 0 and teacher.grad is None


def test_old_classes_keep_only_the_first_logits():
    torch.manual_seed(1)
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5)
    sliced = distillation_loss(student[:, :3], teacher[:, :3])
    loss = distillation_loss(student, teacher, old_classes=3)
    assert loss.item() == pytest.approx(sliced.item())
    assert loss.item() != pytest.approx(distillation_loss(student, teacher).item())
    loss.backward()
    assert student.grad[:, 3:].abs().max().item() == 0.0  # the new classes are free
    assert student.grad[:, :3].abs().sum().item() > 0


def test_mask_picks_the_token_positions_that_count():
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    kept = distillation_loss(student[mask], teacher[mask])
    assert distillation_loss(student, teacher, mask=mask).item() == pytest.approx(kept.item())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 3))
