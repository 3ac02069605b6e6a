"""AdaLoRA's budget allocator (Zhang et al. 2023, section 3.2-3.3, equations 6-12, Algorithm 1).

Called once per optimizer step, after `optimizer.step()` and before the gradients are zeroed:

1. importance of every adapter parameter, eq. 6-9:
       I = |theta * grad|,  I_bar = beta1 I_bar + (1 - beta1) I,  U_bar = beta2 U_bar + (1 - beta2) |I - I_bar|,
       s = I_bar * U_bar;
2. score of triplet i of matrix k, eq. 10:
       S(k, i) = s(Lambda_k,i) + mean_j s(P_k[j, i]) + mean_j s(Q_k[i, j]);
3. budget, eq. 12: b(t) = b(0) for t <= t_init; b(T) + (b(0) - b(T)) (1 - (t - t_init) / (T - t_init - t_final))^3
   in between; b(T) for the last t_final steps;
4. every deltaT steps (and at every step of the final phase, where the scores are frozen and the
   pattern therefore fixed) keep the top-b(t) triplets globally and zero the others' Lambda.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.errors import UserError
from lmforge.methods.adalora.layers import SVDLinear


def budget_at(step: int, init_budget: int, target_budget: int, tinit: int, tfinal: int, total: int) -> int:
    """Equation 12: the total rank allowed after optimizer step `step` (1-based)."""
    if step <= tinit:
        return init_budget
    if step > total - tfinal:
        return target_budget
    progress = (step - tinit) / (total - tfinal - tinit)
    return int(target_budget + (init_budget - target_budget) * (1 - progress) ** 3)


@dataclass
class RankAllocator:
    layers: dict[str, SVDLinear]
    init_r: int
    target_r: int
    tinit: int
    tfinal: int
    delta_t: int
    beta1: float
    beta2: float
    total_steps: int
    importance: dict[int, torch.Tensor] = field(default_factory=dict)  # I_bar per parameter id
    uncertainty: dict[int, torch.Tensor] = field(default_factory=dict)  # U_bar per parameter id
    history: list[dict] = field(default_factory=list)  # (step, budget, ranks) at each allocation

    def __post_init__(self) -> None:
        if self.total_steps - self.tfinal <= self.tinit:
            raise UserError(
                f"adalora: tinit ({self.tinit}) + tfinal ({self.tfinal}) must be below the run's total steps "
                f"({self.total_steps}), or the budget never moves and AdaLoRA is plain LoRA"
            )
        self.init_budget = self.init_r * len(self.layers)
        self.target_budget = self.target_r * len(self.layers)

    def budget(self, step: int) -> int:
        return budget_at(step, self.init_budget, self.target_budget, self.tinit, self.tfinal, self.total_steps)

    @torch.no_grad()
    def update_importance(self) -> None:
        """Equations 6, 8 and 9 for every adapter parameter, from its current gradient."""
        for layer in self.layers.values():
            for p in (layer.lora_A, layer.lora_E, layer.lora_B):
                if p.grad is None:
                    continue
                sensitivity = (p * p.grad).abs()
                key = id(p)
                if key not in self.importance:
                    self.importance[key] = torch.zeros_like(p)
                    self.uncertainty[key] = torch.zeros_like(p)
                smoothed = self.importance[key].mul_(self.beta1).add_(sensitivity, alpha=1 - self.beta1)
                self.uncertainty[key].mul_(self.beta2).add_((sensitivity - smoothed).abs(), alpha=1 - self.beta2)

    def score(self, p: torch.Tensor) -> torch.Tensor:
        """s(.) of equation 7: smoothed sensitivity times smoothed uncertainty (zeros before any update)."""
        key = id(p)
        if key not in self.importance:
            return torch.zeros_like(p)
        return self.importance[key] * self.uncertainty[key]

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Equation 10 per adapted matrix: a (r,) tensor of triplet scores."""
        out = {}
        for name, layer in self.layers.items():
            out[name] = (
                self.score(layer.lora_E).view(-1)  # (r,)
                + self.score(layer.lora_B).mean(dim=0)  # mean over the output dim j of P[j, i]
                + self.score(layer.lora_A).mean(dim=1)  # mean over the input dim j of Q[i, j]
            )
        return out

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, int]:
        """Keep the `budget` highest-scoring triplets over all matrices; zero the rest's Lambda."""
        scores = self.triplet_scores()
        flat = torch.cat([s for s in scores.values()])
        keep = torch.zeros_like(flat, dtype=torch.bool)
        if budget > 0:
            keep[torch.topk(flat, min(budget, flat.numel())).indices] = True  # ties broken by index, exactly b kept
        ranks, start = {}, 0
        for name, layer in self.layers.items():
            mask = keep[start : start + layer.r]
            layer.lora_E.masked_fill_(~mask.view(-1, 1), 0.0)
            ranks[name] = int(mask.sum())
            start += layer.r
        return ranks

    def step(self, step: int) -> int:
        """One allocator update after optimizer step `step` (1-based); returns the budget in force."""
        final_phase = step > self.total_steps - self.tfinal
        if not final_phase:
            self.update_importance()
        budget = self.budget(step)
        if step > self.tinit and (final_phase or step % self.delta_t == 0):
            ranks = self.mask_to_budget(budget)
            if not self.history or self.history[-1]["budget"] != budget or not final_phase:
                self.history.append({"step": step, "budget": budget, "ranks": ranks})
        return budget

    def check_moved(self) -> None:
        """After training: refuse a run in which no triplet was ever pruned (plain LoRA in disguise)."""
        if self.init_budget > self.target_budget and not self.history:
            raise RuntimeError(
                "adalora: the allocator never re-allocated the budget; check that it is called after every "
                "optimizer step and that the total step count is right"
            )

    def final_ranks(self) -> dict[str, int]:
        return {name: layer.rank() for name, layer in self.layers.items()}
