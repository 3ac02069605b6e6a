"""O-LoRA's orthogonality loss: zero for orthogonal subspaces, positive otherwise, a hand value on 2x3
matrices in both forms (the official code's absolute values, the paper's squares), its gradient (to the
current A only), the per-task sum against the official code's concatenated form, and the L2 term."""

import pytest
import torch
from torch import nn

from lmforge.adapters.lora import inject_lora
from lmforge.methods.continual.olora import (
    LAMBDA_1,
    LAMBDA_2,
    frozen_copy,
    l2_loss,
    lora_A_matrices,
    orthogonality_loss,
)

PREVIOUS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
CURRENT = torch.tensor([[2.0, 1.0, 0.0], [0.0, -1.0, 3.0]])
# O = PREVIOUS @ CURRENT.T = [[2, 3], [1, -1]]


def test_the_defaults_are_the_official_codes():
    assert (LAMBDA_1, LAMBDA_2) == (0.5, 0.0)


def test_zero_for_orthogonal_subspaces_and_positive_otherwise():
    eye = torch.eye(4)
    previous, current = {"q": eye[:2]}, {"q": eye[2:]}  # span(e1, e2) against span(e3, e4)
    assert orthogonality_loss(current, [previous]).item() == 0.0
    assert orthogonality_loss(current, [previous], squared=True).item() == 0.0
    torch.manual_seed(0)
    assert orthogonality_loss({"q": torch.randn(2, 4)}, [previous]).item() > 0
    assert orthogonality_loss(current, []).item() == 0.0  # the first task has nothing to be orthogonal to


def test_hand_value_on_two_by_three_matrices():
    assert orthogonality_loss({"q": CURRENT}, [{"q": PREVIOUS}]).item() == pytest.approx(2 + 3 + 1 + 1)
    assert orthogonality_loss({"q": CURRENT}, [{"q": PREVIOUS}], squared=True).item() == pytest.approx(4 + 9 + 1 + 1)


def test_the_gradient_reaches_only_the_current_A():
    overlap = PREVIOUS @ CURRENT.T
    for squared, expected in ((False, overlap.sign().T @ PREVIOUS), (True, 2 * overlap.T @ PREVIOUS)):
        previous = PREVIOUS.clone().requires_grad_(True)  # even a live tensor is treated as frozen
        current = CURRENT.clone().requires_grad_(True)
        orthogonality_loss({"q": current}, [{"q": previous}], squared=squared).backward()
        assert previous.grad is None
        torch.testing.assert_close(current.grad, expected)


def test_one_term_per_task_equals_the_official_codes_concatenated_A():
    torch.manual_seed(1)
    tasks = [{"q": torch.randn(2, 6), "v": torch.randn(2, 6)} for _ in range(3)]
    current = {"q": torch.randn(4, 6), "v": torch.randn(4, 6)}
    concatenated = sum(
        (torch.cat([t[name] for t in tasks]) @ current[name].T).abs().sum() for name in ("q", "v")
    )  # lora_A of rank r_sum = 6 against loranew_A
    torch.testing.assert_close(orthogonality_loss(current, tasks), concatenated)


def test_mismatched_layers_are_refused():
    with pytest.raises(ValueError, match="does not"):
        orthogonality_loss({"q": CURRENT}, [{"v": PREVIOUS}])
    with pytest.raises(ValueError, match="input size"):
        orthogonality_loss({"q": CURRENT}, [{"q": torch.zeros(2, 4)}])


def test_l2_is_the_sum_of_frobenius_norms():
    assert l2_loss([torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 2.0], [2.0, 4.0]])]).item() == pytest.approx(10.0)
    assert l2_loss([]).item() == 0.0


def test_on_a_lora_model_the_loss_trains_this_tasks_A():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    inject_lora(model, ["0", "2"], r=2, alpha=4.0, dropout=0.0, trainable_modules=[])
    finished = frozen_copy(lora_A_matrices(model))  # task 1's A, kept
    for layer in model.modules():  # task 2 starts a fresh A (a random one, as LoRA's init)
        if hasattr(layer, "lora_A"):
            nn.init.normal_(layer.lora_A)
    current = lora_A_matrices(model)
    assert set(current) == {"0", "2"}
    loss = LAMBDA_1 * orthogonality_loss(current, [finished])
    loss.backward()
    assert model[0].lora_A.grad.abs().sum() > 0 and model[2].lora_A.grad.abs().sum() > 0
    assert all(not a.requires_grad for a in finished.values())
