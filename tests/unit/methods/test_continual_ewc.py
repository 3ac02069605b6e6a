"""EWC on a softmax regression: the Fisher against a brute-force per-example computation and the closed form,
the penalty's value and gradient by hand, and a penalty that is non-zero after the first task and pulls the
weights back while a second task trains (Avalanche once shipped an EWC whose penalty was always 0)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lmforge.methods.continual.ewc import EwcAnchor, diagonal_fisher, ewc_penalty, merge_online


def softmax_regression(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2))


def task(seed: int, feature: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs from N(0, 1); the label is whether input `feature` is positive."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, (x[:, feature] > 0).long()


def mean_nll(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def per_example_nll(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def brute_force_fisher(model, x, y) -> dict[str, torch.Tensor]:
    """One forward and backward per example, through .grad: the mean of the squared gradients."""
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            total[name] += p.grad**2
    model.zero_grad()
    return {name: t / len(x) for name, t in total.items()}


def test_fisher_equals_brute_force_and_the_closed_form():
    model = softmax_regression()
    x, y = task(1, feature=0, n=16)
    brute = brute_force_fisher(model, x, y)
    singles = diagonal_fisher(model, [(x[i : i + 1], y[i : i + 1]) for i in range(len(x))], mean_nll)
    vectors = diagonal_fisher(model, [(x[:8], y[:8]), (x[8:], y[8:])], per_example_nll)
    # softmax regression: d(-log p_y)/dW = (p - onehot(y)) x^T, d/db = p - onehot(y)
    with torch.no_grad():
        residual = torch.softmax(model(x), -1) - F.one_hot(y, 2).float()
    closed_weight = (residual[:, :, None] * x[:, None, :]).pow(2).mean(0)
    closed_bias = residual.pow(2).mean(0)
    for fisher in (singles, vectors):
        assert set(fisher) == {"0.weight", "0.bias"}
        for name in fisher:
            torch.testing.assert_close(fisher[name], brute[name])
    torch.testing.assert_close(singles["0.weight"], closed_weight)
    torch.testing.assert_close(singles["0.bias"], closed_bias)


def test_per_batch_fisher_is_the_square_of_the_mean_gradient_and_smaller():
    model = softmax_regression()
    x, y = task(2, feature=0, n=16)
    per_batch = diagonal_fisher(model, [(x, y)], mean_nll)
    model.zero_grad()
    mean_nll(model, (x, y)).backward()
    torch.testing.assert_close(per_batch["0.weight"], model[0].weight.grad ** 2)
    exact = diagonal_fisher(model, [(x, y)], per_example_nll)
    assert per_batch["0.weight"].sum() < exact["0.weight"].sum()


def test_fisher_covers_only_trainable_parameters_and_restores_the_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Tanh(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model.train()
    x, y = task(3, feature=1, n=8)
    first = diagonal_fisher(model, [(x, y)], per_example_nll)
    second = diagonal_fisher(model, [(x, y)], per_example_nll)
    assert set(first) == {"3.weight", "3.bias"}
    assert model.training  # put back in training mode
    torch.testing.assert_close(first["3.weight"], second["3.weight"])  # dropout was off: deterministic
    assert all(p.grad is None for p in model.parameters())  # .grad is left untouched


def train(model, batch, steps: int, lr: float, regularizer=None) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = mean_nll(model, batch)
        if regularizer is not None:
            loss = loss + regularizer()
        loss.backward()
        optimizer.step()


def weighted_distance(model, anchor: EwcAnchor) -> float:
    """sum_i F_i (theta_i - theta*_i)^2: what EWC penalises."""
    return ewc_penalty(model, anchor, lam=2.0).item()


def test_the_penalty_is_nonzero_after_the_first_task_and_pulls_the_weights_back():
    model = softmax_regression()
    task_a, task_b = task(10, feature=0), task(11, feature=1)
    train(model, task_a, steps=200, lr=0.5)
    fisher = diagonal_fisher(model, [task_a], per_example_nll)
    assert all(f.sum() > 0 for f in fisher.values())  # every parameter matters to task A
    anchor = EwcAnchor.from_model(model, fisher)
    assert ewc_penalty(model, anchor, lam=100.0).item() == 0.0  # at theta*

    start = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model  # the very model the anchor was taken from trains on: the anchor must not move with it
    train(plain, task_b, steps=50, lr=0.5)
    assert ewc_penalty(plain, anchor, lam=100.0).item() > 0

    guarded = softmax_regression()
    guarded.load_state_dict(start)
    train(guarded, task_b, steps=50, lr=0.5, regularizer=lambda: ewc_penalty(guarded, anchor, lam=100.0))

    assert weighted_distance(guarded, anchor) < 0.5 * weighted_distance(plain, anchor)
    assert mean_nll(guarded, task_a) < mean_nll(plain, task_a)  # and task A is forgotten less


def test_penalty_by_hand_and_its_gradient():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.fill_(0.5)
    anchor = EwcAnchor(
        params={"weight": torch.tensor([[0.0, 0.0]]), "bias": torch.tensor([0.0])},
        fisher={"weight": torch.tensor([[2.0, 0.5]]), "bias": torch.tensor([4.0])},
    )
    penalty = ewc_penalty(model, anchor, lam=3.0)
    # (3 / 2) * (2 * 1^2 + 0.5 * (-2)^2 + 4 * 0.5^2) = 1.5 * 5 = 7.5
    assert penalty.item() == pytest.approx(7.5)
    penalty.backward()
    # d/dtheta = lam * F * (theta - theta*)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[6.0, -3.0]]))
    torch.testing.assert_close(model.bias.grad, torch.tensor([6.0]))
    # two anchors: the sum of their penalties
    assert ewc_penalty(model, [anchor, anchor], lam=3.0).item() == pytest.approx(15.0)


def test_online_merge_keeps_the_newest_theta_and_sums_the_decayed_fishers():
    old = EwcAnchor(
        {"w": torch.tensor([1.0]), "u": torch.tensor([7.0])}, {"w": torch.tensor([2.0]), "u": torch.ones(1)}
    )
    new = EwcAnchor({"w": torch.tensor([5.0])}, {"w": torch.tensor([3.0])})
    merged = merge_online(old, new, gamma=0.5)
    torch.testing.assert_close(merged.params["w"], torch.tensor([5.0]))
    torch.testing.assert_close(merged.fisher["w"], torch.tensor([4.0]))  # 3 + 0.5 * 2
    # "u", frozen during the new task, keeps its own anchor with a decayed Fisher
    torch.testing.assert_close(merged.params["u"], torch.tensor([7.0]))
    torch.testing.assert_close(merged.fisher["u"], torch.tensor([0.5]))


def test_anchor_tensors_round_trip_and_unknown_names_are_refused():
    model = softmax_regression()
    x, y = task(4, feature=0, n=8)
    anchor = EwcAnchor.from_model(model, diagonal_fisher(model, [(x, y)], per_example_nll))
    again = EwcAnchor.from_tensors(anchor.tensors())
    assert set(again.params) == set(again.fisher) == {"0.weight", "0.bias"}
    torch.testing.assert_close(again.fisher["0.weight"], anchor.fisher["0.weight"])
    with pytest.raises(ValueError, match="does not have"):
        ewc_penalty(nn.Linear(3, 2), anchor, lam=1.0)  # names "weight", not "0.weight"
