"""Elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural
networks", PNAS, eq. 3): while training task B, each parameter is pulled back towards its value theta*_A after
task A, as strongly as the diagonal Fisher information F says task A depends on it:

    L(theta) = L_B(theta) + sum_i (lambda / 2) * F_i * (theta_i - theta*_A,i)^2

`diagonal_fisher` estimates F as the empirical Fisher: the mean over examples of the squared gradient of the
example's log-likelihood (of its observed label, not of labels sampled from the model). Two ways to get it:
- exact: `loss_of_batch` returns a vector of per-example losses (one backward per example), or the batches
  hold one example each;
- the common approximation: `loss_of_batch` returns the batch's mean loss and F is the mean over batches of
  its squared gradient. The square of a mean gradient is not the mean of the squares: for B roughly
  independent examples it is about B times smaller, which rescales the lambda that works.
Dropout is off while F is estimated (the model is put in eval mode, then back).

After each task the recipe keeps an `EwcAnchor` (theta* and F, float32 copies). `ewc_penalty` sums one
penalty per finished task, as the paper does for a third task ("two separate penalties"). `merge_online`
instead folds the anchors into one, anchored at the latest theta* with the tasks' Fishers summed (decayed by
gamma): online EWC (Schwarz et al. 2018, "Progress & Compress"; Huszar 2018, "Note on the quadratic
penalties in elastic weight consolidation"), which keeps the memory at one anchor however long the stream.
Parameters are named as in `model.named_parameters()` of the unwrapped model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def diagonal_fisher(
    model: nn.Module, batches: Iterable[Any], loss_of_batch: Callable[[nn.Module, Any], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """{parameter name: the diagonal empirical Fisher}, over the parameters that require a gradient.

    `loss_of_batch(model, batch)` is the negative log-likelihood: a scalar (the batch's mean: per-batch
    gradients, the approximation) or a vector with one loss per example (per-example gradients, exact).
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    squares = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    n_terms = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            losses = loss_of_batch(model, batch).reshape(-1)
            for i, loss in enumerate(losses):
                grads = torch.autograd.grad(
                    loss, list(params.values()), retain_graph=i < len(losses) - 1, allow_unused=True
                )
                for name, grad in zip(params, grads):
                    if grad is not None:  # a parameter this loss does not reach has a zero gradient
                        squares[name] += grad.detach().float() ** 2
                n_terms += 1
    finally:
        model.train(was_training)
    if n_terms == 0:
        raise ValueError("the Fisher information needs at least one batch")
    return {name: total / n_terms for name, total in squares.items()}


@dataclass
class EwcAnchor:
    """What EWC keeps of a finished task: theta* (the parameters it ended with) and their Fisher F."""

    params: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]

    @classmethod
    def from_model(cls, model: nn.Module, fisher: dict[str, torch.Tensor]) -> EwcAnchor:
        """Copy (not reference: later training must not move the anchor) the parameters that `fisher` covers."""
        params = {name: p.detach().float().clone() for name, p in model.named_parameters() if name in fisher}
        missing = set(fisher) - set(params)
        if missing:
            raise ValueError(f"the Fisher names parameters the model does not have: {sorted(missing)[:3]}")
        return cls(params, {name: f.detach().float().clone() for name, f in fisher.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """A flat {key: tensor} dict to save (e.g. with safetensors); `from_tensors` reads it back."""
        flat = {f"theta/{name}": t for name, t in self.params.items()}
        flat.update({f"fisher/{name}": f for name, f in self.fisher.items()})
        return flat

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> EwcAnchor:
        params = {key.removeprefix("theta/"): t for key, t in flat.items() if key.startswith("theta/")}
        fisher = {key.removeprefix("fisher/"): t for key, t in flat.items() if key.startswith("fisher/")}
        return cls(params, fisher)


def merge_online(previous: EwcAnchor, new: EwcAnchor, gamma: float = 1.0) -> EwcAnchor:
    """Online EWC's single anchor: theta* of the newest task, F = gamma * F_previous + F_new.

    A parameter only the previous anchor covers (trained then, frozen since) keeps its theta* and gamma * F."""
    params, fisher = dict(new.params), dict(new.fisher)
    for name, previous_fisher in previous.fisher.items():
        if name in fisher:
            fisher[name] = fisher[name] + gamma * previous_fisher
        else:
            params[name], fisher[name] = previous.params[name], gamma * previous_fisher
    return EwcAnchor(params, fisher)


def ewc_penalty(model: nn.Module, anchors: EwcAnchor | Sequence[EwcAnchor], lam: float) -> torch.Tensor:
    """sum over anchors of (lam / 2) * sum_i F_i (theta_i - theta*_i)^2: a differentiable scalar (eq. 3)."""
    if isinstance(anchors, EwcAnchor):
        anchors = [anchors]
    params = dict(model.named_parameters())
    total = torch.zeros((), device=next(model.parameters()).device)
    for anchor in anchors:
        for name, fisher in anchor.fisher.items():
            if name not in params:
                raise ValueError(f"the EWC anchor names a parameter the model does not have: {name}")
            p = params[name]
            shift = p.float() - anchor.params[name].to(p.device)
            total = total + (fisher.to(p.device) * shift**2).sum()
    return lam / 2 * total
