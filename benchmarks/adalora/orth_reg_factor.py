"""How much stronger the paper's squared orthogonal penalty (eq. 4) pulls than the official code's
unsquared one, at initialisation (P, Q ~ N(0, 0.02)), for MiniLM's adapted shapes.

Per matrix, d||G - I||_F^2 = 2 ||G - I||_F d||G - I||_F, so the gradient ratio is 2 ||G - I||_F; this
script measures it with autograd on freshly initialised adapters (seed 0) instead of trusting the
formula, for init_r 3 and 12 (the benchmark's r2 and r8 rows):

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/adalora/orth_reg_factor.py
"""

import torch

from lmforge.methods.adalora.layers import SVDLinear, orthogonal_penalty

# MiniLM (all-MiniLM-L6-v2): hidden 384, feed-forward 1536
SHAPES = {
    "W_q, W_k, W_v, W_o (384 -> 384)": (384, 384),
    "W_f1 (384 -> 1536)": (384, 1536),
    "W_f2 (1536 -> 384)": (1536, 384),
}


def gradient_norms(layer: SVDLinear, form: str) -> tuple[float, float]:
    layer.zero_grad(set_to_none=True)
    orthogonal_penalty([layer], form).backward()
    return layer.lora_A.grad.norm().item(), layer.lora_B.grad.norm().item()


def main() -> None:
    print("| init_r | matrix | factor on Q (lora_A) | factor on P (lora_B) |")
    print("|---|---|---|---|")
    for r in (3, 12):
        for name, (d_in, d_out) in SHAPES.items():
            torch.manual_seed(0)
            layer = SVDLinear(torch.nn.Linear(d_in, d_out), r=r, alpha=2.0 * r, dropout=0.0)
            sq_a, sq_b = gradient_norms(layer, "squared")
            off_a, off_b = gradient_norms(layer, "official")
            print(f"| {r} | {name} | {sq_a / off_a:.2f} | {sq_b / off_b:.2f} |")


if __name__ == "__main__":
    main()
