"""Integrated gradients that choose their number of steps per text by their own completeness error.

Integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks", eq. 1)
attribute f(x) - f(x') to the input's features as (x - x') times the mean gradient along the straight path
from the baseline x' to x. Section 3 proves completeness (proposition 1): the attributions add up to
f(x) - f(x'). The paper's remark on computing it (section 3, "Computing Integrated Gradients") turns
that into a check on the approximation: "check that the attributions approximately adds up to the
difference between the score at the input and that at the baseline ... and if not increase the step size
m"; it finds 20 to 300 steps enough to get within 5%.

So each text starts with 8 steps and doubles (16, 32, 64, ...) until its completeness error
|sum of attributions - (f(x) - f(x'))| / |f(x) - f(x')| is at most the tolerance, or the cap is reached.

The rule is the trapezoid rule on the uniform grid alpha_k = k / n, k = 0..n (n steps, n + 1 gradient
evaluations), for two reasons:
  - doubling n keeps every old point (k / n = 2k / 2n): the new points k / 2n, k odd, interleave the old
    ones, so going from n to 2n steps costs only n new gradients, and a text that stops at 64 steps has
    paid 65 gradients in all, not 8 + 16 + 32 + 64. Gauss-Legendre (Captum's default) is more accurate
    per point, but its nodes for n and 2n points are disjoint: every refinement would start over.
  - it is second-order (error O(1 / n^2) for a smooth path), where the left or right Riemann sums, which
    also nest, are first-order; and its end points give f(x') and f(x) from the same passes.
It is Captum's `riemann_trapezoid` on the same n + 1 points times (n + 1) / n: Captum weights them 1 / (n + 1)
(half at the ends), which sums to n / (n + 1) of the path, where the trapezoid rule's 1 / n sums to 1 (tested).
Simpson's rule, (4 T(n) - T(n / 2)) / 3 on the same points, is fourth-order and costs no more; it was tried
and lost in a one-off probe (2026-12-07; not offered as an option, so no benchmark row measures it):
on 16 SST-2 dev sentences with the MiniLM classifier (benchmarks/explain) it used 27.5 gradients per
text for a mean completeness error of 0.017, where the trapezoid rule used 19.5 for 0.010 (Captum's 50
Gauss-Legendre steps: 50 for 0.0014). Those paths are not smooth enough at 8-32 steps for its order
to pay.

TOLERANCE = 0.05 is the paper's own target ("within 5%"). MAX_STEPS = 256 is the largest doubling of 8
inside the paper's 20-300 range: a text whose path is not integrated within 5% by then (a model that
jumps from one label to the other within a sliver of the path) is reported with its error, not refined
further at ever higher cost. Where f(x) - f(x') is tiny the relative error is not meaningful: the gap is
taken as at least GAP_FLOOR (probability units) in the denominator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmforge.errors import UserError

FIRST_STEPS = 8
TOLERANCE = 0.05  # Sundararajan et al. 2017, section 3: "within 5%"
MAX_STEPS = 256  # the largest 8 x 2^k inside the paper's 20-300 steps
GAP_FLOOR = 1e-3  # |f(x) - f(x')| below this is treated as this in the relative error


def relative_completeness_error(total: float, gap: float) -> float:
    """|sum of attributions - (f(x) - f(x'))| / max(|f(x) - f(x')|, GAP_FLOOR)."""
    return abs(total - gap) / max(abs(gap), GAP_FLOOR)


def new_points(steps: int) -> list[float]:
    """The path positions a text needs next: all of 0..1 on FIRST_STEPS steps at first, then the odd k / 2n."""
    if steps == 0:
        return [k / FIRST_STEPS for k in range(FIRST_STEPS + 1)]
    return [k / (2 * steps) for k in range(1, 2 * steps, 2)]


def largest_steps(max_steps: int) -> int:
    """The largest FIRST_STEPS x 2^k not above `max_steps` (at least FIRST_STEPS)."""
    steps = FIRST_STEPS
    while steps * 2 <= max_steps:
        steps *= 2
    return steps


def adaptive_integrated_gradients(
    target_output: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    mask: torch.Tensor,
    lengths: list[int],
    tolerance: float = TOLERANCE,
    max_steps: int = MAX_STEPS,
    rows_per_pass: Callable[[int], int] = lambda width: 10**9,
) -> tuple[torch.Tensor, list[int], list[float]]:
    """Integrated gradients of `target_output` for each text of a batch, each refined on its own.

    target_output: (R, T, D) embeddings, (R, T) attention mask and (R,) the text of each row -> (R,) the
    explained output of each row. inputs, baselines: (B, T, D); mask: (B, T); lengths: each text's own
    length (a pass is cut to the widest text in it). rows_per_pass(width) is how many (text x point) rows
    one forward and backward pass may hold. Returns (B, T) attributions, the steps each text used and its
    final relative completeness error.
    """
    cap = largest_steps(max_steps)
    difference = inputs - baselines  # (B, T, D); 0 at [CLS], [SEP] and padding
    ends = torch.zeros_like(inputs)  # (B, T, D) g(0) + g(1)
    interior = torch.zeros_like(inputs)  # (B, T, D) sum of g(k / n), 0 < k < n
    at_ends = torch.zeros((len(inputs), 2), dtype=torch.float64)  # f(x') and f(x) of each text
    steps = [0] * len(inputs)
    errors = [float("inf")] * len(inputs)
    active = list(range(len(inputs)))
    while active:
        rows = [(i, alpha) for i in active for alpha in new_points(steps[i])]  # (text, path position)
        for start, stop in passes(rows, lengths, rows_per_pass):
            chunk = rows[start:stop]
            width = max(lengths[i] for i, _ in chunk)
            text = torch.tensor([i for i, _ in chunk], device=inputs.device)  # (R,)
            alpha = torch.tensor([a for _, a in chunk], device=inputs.device, dtype=inputs.dtype)  # (R,)
            points = baselines[text, :width] + alpha[:, None, None] * difference[text, :width]  # (R, W, D)
            points.requires_grad_()
            out = target_output(points, mask[text, :width], text)  # (R,)
            (grads,) = torch.autograd.grad(out.sum(), points)  # rows are independent: each row's own gradient
            is_end = (alpha == 0) | (alpha == 1)
            ends[:, :width].index_add_(0, text[is_end], grads[is_end])
            interior[:, :width].index_add_(0, text[~is_end], grads[~is_end])
            end_rows = is_end.nonzero().flatten().tolist()
            for r in end_rows:
                at_ends[chunk[r][0], int(chunk[r][1] == 1)] = float(out[r].detach())
        still = []
        for i in active:
            steps[i] = FIRST_STEPS if steps[i] == 0 else 2 * steps[i]
            total = float(trapezoid(difference[i], ends[i], interior[i], steps[i]).sum())
            errors[i] = relative_completeness_error(total, float(at_ends[i, 1] - at_ends[i, 0]))
            if errors[i] > tolerance and steps[i] < cap:
                still.append(i)
        active = still
    scores = torch.stack([trapezoid(difference[i], ends[i], interior[i], steps[i]) for i in range(len(inputs))])
    return scores, steps, errors


def trapezoid(difference: torch.Tensor, ends: torch.Tensor, interior: torch.Tensor, steps: int) -> torch.Tensor:
    """(T,) the trapezoid rule on `steps` steps: (x - x') . (g(0) / 2 + sum of interior g + g(1) / 2) / n,
    summed over the embedding; all (T, D)."""
    return (difference * (0.5 * ends + interior) / steps).sum(-1)


def check_options(steps: int | None, tolerance: float, max_steps: int) -> None:
    """One clear error for a bad fixed step count, tolerance or cap."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserError(f"integrated gradients' fixed steps must be a whole number >= 1, got {steps!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < math.inf:
        raise UserError(f"integrated gradients' tolerance must be a finite number >= 0, got {tolerance!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < FIRST_STEPS:
        raise UserError(f"integrated gradients' max steps must be a whole number >= {FIRST_STEPS}, got {max_steps!r}")


def passes(rows: list[tuple[int, float]], lengths: list[int], rows_per_pass: Callable[[int], int]):
    """(start, stop) of consecutive slices of `rows`, each as long as rows_per_pass allows at its widest text."""
    start = 0
    while start < len(rows):
        stop, width = start, 0
        while stop < len(rows):
            wider = max(width, lengths[rows[stop][0]])
            if stop > start and stop - start + 1 > rows_per_pass(wider):
                break
            stop, width = stop + 1, wider
        yield start, stop
        start = stop
