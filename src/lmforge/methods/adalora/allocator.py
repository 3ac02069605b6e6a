"""AdaLoRA's budget allocator (Zhang et al. 2023, section 3.2-3.3, equations 6-12, Algorithm 1).

Called once per optimizer step, after `optimizer.step()` and before the gradients are zeroed:

1. importance of every adapter parameter, eq. 6-9:
       I = |theta * grad|,  I_bar = beta1 I_bar + (1 - beta1) I,  U_bar = beta2 U_bar + (1 - beta2) |I - I_bar|,
       s = I_bar * U_bar;
2. score of triplet i of matrix k, eq. 10:
       S(k, i) = s(Lambda_k,i) + mean_j s(P_k[j, i]) + mean_j s(Q_k[i, j]);
3. budget, eq. 12: b(t) = b(0) for t <= t_init; b(T) + (b(0) - b(T)) (1 - (t - t_init) / (T - t_init - t_final))^3
   in between; b(T) for the last t_final steps;
4. every deltaT steps keep the top-b(t) triplets globally and zero the others' Lambda; at step
   T - t_final, where b(t) reaches b(T), allocate once more whatever deltaT says, freeze the pattern
   and re-apply it after every later step (and before saving): between two allocations the optimizer
   revives pruned Lambda entries, so without this a run with t_final = 0 (peft's default) would end
   with its initial budget.

The cubic term follows the official code (QingruZhang/AdaLoRA, loralib/adalora.py,
`schedule_threshold`): (t - t_init) / (T - t_init - t_final).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.errors import UserError
from lmforge.methods.adalora.layers import SVDLinear


def check_schedule(tinit: int, tfinal: int, delta_t: int, total: int) -> None:
    """Refuse a schedule under which the budget can never move (AdaLoRA would silently be LoRA)."""
    if total - tfinal <= tinit:
        raise UserError(
            f"adalora: tinit ({tinit}) + tfinal ({tfinal}) must be below the run's total steps ({total}), "
            "or the budget never moves and AdaLoRA is plain LoRA"
        )


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
    importance: dict[str, torch.Tensor] = field(default_factory=dict)  # I_bar per parameter ("layer.lora_A")
    uncertainty: dict[str, torch.Tensor] = field(default_factory=dict)  # U_bar per parameter
    history: list[dict] = field(default_factory=list)  # (step, budget, ranks) at each allocation

    def __post_init__(self) -> None:
        check_schedule(self.tinit, self.tfinal, self.delta_t, self.total_steps)
        self.init_budget = self.init_r * len(self.layers)
        self.target_budget = self.target_r * len(self.layers)
        self.keep: list[torch.Tensor] = []  # per matrix, (r, 1): 1 for a kept triplet, 0 for a pruned one
        self.fixed = False  # the final phase's pattern has been chosen

    def budget(self, step: int) -> int:
        return budget_at(step, self.init_budget, self.target_budget, self.tinit, self.tfinal, self.total_steps)

    def parameters(self) -> tuple[list[str], list[torch.Tensor]]:
        """Keys ("layer.lora_A") and tensors of P, Lambda and Q of every adapted matrix."""
        keys = [f"{name}.{kind}" for name in self.layers for kind in ("lora_A", "lora_E", "lora_B")]
        params = [getattr(layer, kind) for layer in self.layers.values() for kind in ("lora_A", "lora_E", "lora_B")]
        return keys, params

    @torch.no_grad()
    def update_importance(self) -> None:
        """Equations 6, 8 and 9 for every adapter parameter, from its current gradient.

        Fused over all tensors (`torch._foreach_*`, as torch's own optimizers do): one kernel per
        operation instead of one per tensor, which is what keeps the allocator cheap on a GPU."""
        keys, params = self.parameters()
        present = [(k, p) for k, p in zip(keys, params) if p.grad is not None]
        if not present:
            return
        for k, p in present:
            if k not in self.importance:
                self.importance[k] = torch.zeros_like(p)
                self.uncertainty[k] = torch.zeros_like(p)
        tensors = [p for _, p in present]
        importance = [self.importance[k] for k, _ in present]
        uncertainty = [self.uncertainty[k] for k, _ in present]
        sensitivity = torch._foreach_mul(tensors, [p.grad for p in tensors])  # eq. 6: |theta * grad|
        torch._foreach_abs_(sensitivity)
        torch._foreach_mul_(importance, self.beta1)  # eq. 8
        torch._foreach_add_(importance, sensitivity, alpha=1 - self.beta1)
        deviation = torch._foreach_sub(sensitivity, importance)  # eq. 9: |I - I_bar|
        torch._foreach_abs_(deviation)
        torch._foreach_mul_(uncertainty, self.beta2)
        torch._foreach_add_(uncertainty, deviation, alpha=1 - self.beta2)

    def score(self, key: str, p: torch.Tensor) -> torch.Tensor:
        """s(.) of equation 7: smoothed sensitivity times smoothed uncertainty (zeros before any update)."""
        if key not in self.importance:
            return torch.zeros_like(p)
        return self.importance[key] * self.uncertainty[key]

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Equation 10 per adapted matrix: a (r,) tensor of triplet scores."""
        out = {}
        for name, layer in self.layers.items():
            out[name] = (
                self.score(f"{name}.lora_E", layer.lora_E).view(-1)  # (r,)
                + self.score(f"{name}.lora_B", layer.lora_B).mean(dim=0)  # mean over the output dim j of P[j, i]
                + self.score(f"{name}.lora_A", layer.lora_A).mean(dim=1)  # mean over the input dim j of Q[i, j]
            )
        return out

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, int]:
        """Keep the `budget` highest-scoring triplets over all matrices; zero the rest's Lambda."""
        flat = torch.cat(list(self.triplet_scores().values()))  # (sum of r,)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        if budget > 0:
            keep[torch.topk(flat, min(budget, flat.numel())).indices] = True  # ties broken by index, exactly b kept
        sizes = [layer.r for layer in self.layers.values()]
        self.keep = [mask.view(-1, 1).to(flat.dtype) for mask in torch.split(keep, sizes)]  # (r, 1) each
        self.apply_mask()
        counts = [int(mask.sum()) for mask in torch.split(keep.cpu(), sizes)]  # one device sync
        return dict(zip(self.layers, counts))

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Zero the pruned triplets' Lambda (the optimizer step may have moved them off zero)."""
        if not self.keep:  # no allocation yet: nothing is pruned
            return
        torch._foreach_mul_([layer.lora_E for layer in self.layers.values()], self.keep)

    def step(self, step: int, update_scores: bool = True) -> int:
        """One allocator update after optimizer step `step` (1-based); returns the budget in force.

        `update_scores=False` skips the importance update (a step whose gradients were not finite
        and that the fp16 loss scaler skipped)."""
        budget = self.budget(step)
        if self.fixed:  # the final pattern is chosen: undo what the optimizer step revived
            self.apply_mask()
            return budget
        if update_scores:
            self.update_importance()
        at_target = step >= self.total_steps - self.tfinal  # b(t) = b(T) from here on
        if step > self.tinit and (at_target or step % self.delta_t == 0):
            ranks = self.mask_to_budget(budget)
            self.history.append({"step": step, "budget": budget, "ranks": ranks})
            self.fixed = at_target
        return budget

    def check_moved(self) -> None:
        """After training: the adapter must hold exactly the schedule's final budget b(T), and (when
        b(T) < b(0)) the allocator must have re-allocated at least once (else it was LoRA in disguise)."""
        if self.init_budget > self.target_budget and not self.history:
            raise RuntimeError(
                "adalora: the allocator never re-allocated the budget; check that it is called after every "
                "optimizer step and that the total step count is right"
            )
        kept = sum(self.final_ranks().values())
        if kept != self.target_budget:
            raise RuntimeError(
                f"adalora: the adapter keeps {kept} triplets at the end, but the schedule's final budget is "
                f"{self.target_budget}; check that the allocator is called after every optimizer step"
            )

    def state_dict(self) -> dict:
        """Saved with every checkpoint, so that a resumed run allocates exactly as an uninterrupted one."""
        return {
            "importance": self.importance,
            "uncertainty": self.uncertainty,
            "history": self.history,
            "keep": self.keep,
            "fixed": self.fixed,
        }

    def load_state_dict(self, state: dict) -> None:
        device = next(iter(self.layers.values())).lora_E.device
        self.importance = {k: v.to(device) for k, v in state["importance"].items()}
        self.uncertainty = {k: v.to(device) for k, v in state["uncertainty"].items()}
        self.history = list(state["history"])
        self.keep = [k.to(device) for k in state["keep"]]
        self.fixed = state["fixed"]

    def final_ranks(self) -> dict[str, int]:
        return {name: layer.rank() for name, layer in self.layers.items()}
