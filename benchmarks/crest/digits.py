"""CReST and CReST+ on scikit-learn's 8x8 digits made long-tailed: the mechanism apart from text.

Wei, Sohn, Mellina, Yuille, Yang, "CReST: A Class-Rebalancing Self-Training Framework for Imbalanced
Semi-Supervised Learning", CVPR 2021 (Algorithm 1, sections 3.2-3.3), with FixMatch (Sohn et al., NeurIPS
2020, eq. 4) as the learner of every generation. The model-independent pieces are lmforge's own
(methods/crest/rebalance.py, fixmatch.py, longtail.py, core/metrics.py); this script adds only a small MLP
and image views, and mirrors methods/crest/generation.py and recipe.py:

    L_1 <- L
    for g = 1..G: model_g <- FixMatch(fresh MLP and optimizer, L_g, U)   (CReST+: aligned weak predictions,
                                                                           target t_g, a new running mean)
                  L_{g+1} <- L + per class l the most confident floor(count_l * mu_l) of U predicted as l
                  (the pseudo-labeled samples stay in U)

Data: load_digits (1,797 images, 0-16, scaled to 0-1). A balanced test set (30 per class, 300) and a
balanced validation set (15 per class, 150) are carved first with a fixed seed (0), the same for every
seed; L and U are drawn from the remaining 1,347 by long_tail_split(gamma, labeled fraction 0.2, seed).
gamma 100 cannot be drawn: the head class has at most 138 examples left, so the tail's share
floor(138 / 100) = 1 leaves no unlabeled example and long_tail_split refuses it (max_per_class and a lower
labeled fraction only lower that count; even the whole data set has at most 183 per class, under the 200
that gamma 100 needs). gamma 50 is the largest round ratio it accepts here: tail 1 labeled + 1 unlabeled.

Model: MLP 64 -> 128 -> 10 (ReLU), AdamW (constant learning rate, weight decay 0.01), labeled batch B = 64,
unlabeled batch mu B = 448 (mu = 7), lambda_u = 1, threshold 0.95 (FixMatch's defaults); CReST alpha = 1/3,
t_min = 0.5, G = 6 generations, each as many steps as the FixMatch arm. Views, after FixMatch's: weak = the
image shifted by up to 1 pixel in each direction (random, zero fill; labeled batches get it too); strong =
a shift by up to 2 pixels + Gaussian noise (sigma 0.15, clipped to 0-1) + a zeroed random 3x3 patch (in
the place of RandAugment + Cutout). The arms: supervised (L only, lambda_u = 0), FixMatch (one generation,
no alignment), CReST, CReST+. Learning rate {1e-3, 3e-3} and steps {250, 500, 1000, 2000} (read along one
run: the learning rate is constant) are chosen per gamma for supervised and for FixMatch by the mean
validation balanced accuracy over the seeds; CReST and CReST+ take FixMatch's, since a CReST generation is
a FixMatch run. The test split is never read for a choice.

Reported per gamma and arm over the seeds: test balanced accuracy (the mean per-class recall, the paper's
metric), minority recall (the mean recall of the rarer half of the classes by labeled count), the rarest
class's recall, and each generation's balanced accuracy for CReST and CReST+.

    nice -n 10 .venv/bin/python benchmarks/crest/digits.py            # writes benchmarks/crest/digits_results.json

The full run (gamma 10 and 50, seeds 1-3, grid included) took 5.2 and 5.7 minutes (two runs, identical
numbers) on 2 AMD EPYC cores shared with another job (load average 2.5-4.2; one torch thread, the default
--threads 1). A wider grid, as a check (9.9 minutes, load average 4.2-5.6):

    nice -n 10 .venv/bin/python benchmarks/crest/digits.py --lr-grid 1e-3 3e-3 1e-2 \\
        --steps-grid 250 500 1000 2000 4000 --out benchmarks/crest/digits_results_wide_grid.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.core.metrics import classification_metrics, per_class_recall
from lmforge.methods.crest.fixmatch import unlabeled_loss
from lmforge.methods.crest.longtail import long_tail_split
from lmforge.methods.crest.rebalance import (
    RunningDistribution,
    align,
    alignment_target,
    alignment_temperature,
    select_pseudo_labels,
    selection_rates,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records helpers (source_commit)
RESULTS = HERE / "digits_results.json"
N_CLASSES, SIDE = 10, 8
ARMS = ["supervised", "fixmatch", "crest", "crest_plus"]
ARM_IDS = {arm: i for i, arm in enumerate(ARMS)}  # part of each training seed


@dataclass
class Settings:
    labeled_fraction: float = 0.2
    test_per_class: int = 30
    val_per_class: int = 15
    holdout_seed: int = 0  # the test and validation sets are the same for every seed
    batch_size: int = 64
    unlabeled_ratio: int = 7  # mu
    unlabeled_weight: float = 1.0  # lambda_u
    threshold: float = 0.95
    alpha: float = 1 / 3
    t_min: float = 0.5
    generations: int = 6
    alignment_momentum: float = 0.999
    weight_decay: float = 0.01
    hidden: int = 128
    noise_sigma: float = 0.15
    cutout: int = 3
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    steps_grid: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000])


@dataclass
class Split:
    """One (gamma, seed) draw: features (N, 64) in 0-1, labels (N,), and the index sets into them."""

    x: torch.Tensor
    y: torch.Tensor
    test: np.ndarray
    val: np.ndarray
    labeled: np.ndarray
    unlabeled: np.ndarray
    class_order: list[int]  # head to tail
    labeled_counts: list[int]  # per class id

    @property
    def minority(self) -> list[int]:
        """The rarer half of the classes by labeled count."""
        return self.class_order[len(self.class_order) // 2 :]


def load_pool() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target, dtype=torch.long)


def make_split(x: torch.Tensor, y: torch.Tensor, gamma: float, seed: int, s: Settings) -> Split:
    """Test and validation sets (balanced, fixed seed) first, then L and U as a long tail from the rest."""
    rng = np.random.default_rng(s.holdout_seed)
    test, val, rest = [], [], []
    for c in range(N_CLASSES):
        members = rng.permutation(np.flatnonzero(y.numpy() == c))
        test += members[: s.test_per_class].tolist()
        val += members[s.test_per_class : s.test_per_class + s.val_per_class].tolist()
        rest += members[s.test_per_class + s.val_per_class :].tolist()
    rest = np.sort(rest)
    draw = long_tail_split([str(int(y[i])) for i in rest], gamma, s.labeled_fraction, seed)
    counts = [draw.labeled_counts[str(c)] for c in range(N_CLASSES)]  # class id order, as selection_rates wants
    return Split(x, y, np.sort(test), np.sort(val), rest[draw.labeled], rest[draw.unlabeled],
                 [int(c) for c in draw.class_order], counts)  # fmt: skip


# ---- views -------------------------------------------------------------------------------------


def shift(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """(N, 64) images each moved by a random (dy, dx) in [-max_shift, max_shift], the vacated pixels zero."""
    n = len(images)
    padded = F.pad(images.view(n, SIDE, SIDE), (max_shift,) * 4)
    start = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    rows = (start[0][:, None] + torch.arange(SIDE))[:, :, None]  # (N, 8, 1)
    cols = (start[1][:, None] + torch.arange(SIDE))[:, None, :]  # (N, 1, 8)
    return padded[torch.arange(n)[:, None, None], rows, cols].reshape(n, -1)


def weak_view(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return shift(images, 1, gen)


def strong_view(images: torch.Tensor, gen: torch.Generator, s: Settings) -> torch.Tensor:
    """A larger shift, Gaussian noise and a zeroed random square: a small stand-in for RandAugment + Cutout."""
    n = len(images)
    out = shift(images, 2, gen).view(n, SIDE, SIDE)
    out = (out + s.noise_sigma * torch.randn(out.shape, generator=gen)).clamp(0.0, 1.0)
    corner = torch.randint(0, SIDE - s.cutout + 1, (2, n), generator=gen)
    grid = torch.arange(SIDE)
    in_rows = (grid[None] >= corner[0][:, None]) & (grid[None] < corner[0][:, None] + s.cutout)  # (N, 8)
    in_cols = (grid[None] >= corner[1][:, None]) & (grid[None] < corner[1][:, None] + s.cutout)
    out = out.masked_fill(in_rows[:, :, None] & in_cols[:, None, :], 0.0)
    return out.reshape(n, -1)


# ---- training ----------------------------------------------------------------------------------


def training_seed(arm: str, gamma: float, seed: int, generation: int) -> int:
    """One seed per (arm, gamma, seed, generation): every generation's model and draws are its own."""
    return int(np.random.SeedSequence([ARM_IDS[arm], int(gamma), seed, generation]).generate_state(1)[0])


class Cycler:
    """Batches of indices from consecutive seeded permutations of range(n), a new one each pass."""

    def __init__(self, n: int, size: int, gen: torch.Generator):
        self.n, self.size, self.gen, self.queue = n, size, gen, torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        while len(self.queue) < self.size:
            self.queue = torch.cat([self.queue, torch.randperm(self.n, generator=self.gen)])
        batch, self.queue = self.queue[: self.size], self.queue[self.size :]
        return batch


def train_generation(
    x_lab: torch.Tensor,
    y_lab: torch.Tensor,
    x_unl: torch.Tensor,
    s: Settings,
    lr: float,
    steps: int,
    seed: int,
    unlabeled_weight: float,
    target: torch.Tensor | None = None,
    on_checkpoint=None,
    checkpoints: tuple[int, ...] = (),
) -> tuple[torch.nn.Module, float]:
    """A fresh MLP trained by FixMatch for `steps` steps (supervised alone when unlabeled_weight is 0).

    target: CReST+'s alignment target; the weak probabilities are aligned to it through a running mean
    that starts afresh here. Returns the model and the mean share of unlabeled examples above the threshold."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(SIDE * SIDE, s.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(s.hidden, N_CLASSES))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    labeled_batches = Cycler(len(x_lab), s.batch_size, gen)
    unlabeled_batches = Cycler(len(x_unl), s.unlabeled_ratio * s.batch_size, gen)
    running = RunningDistribution(N_CLASSES, s.alignment_momentum)

    def aligned(probs: torch.Tensor) -> torch.Tensor:
        return align(probs, target, running.update(probs))

    mask_total = 0.0
    for step in range(1, steps + 1):
        li = labeled_batches.next()
        loss = F.cross_entropy(model(weak_view(x_lab[li], gen)), y_lab[li])
        if unlabeled_weight > 0:
            u = x_unl[unlabeled_batches.next()]
            with torch.no_grad():  # FixMatch stops the gradient at the weak prediction
                weak_logits = model(weak_view(u, gen))
            strong_logits = model(strong_view(u, gen, s))
            out = unlabeled_loss(weak_logits, strong_logits, s.threshold, aligned if target is not None else None)
            loss = loss + unlabeled_weight * out.loss
            mask_total += out.mask.mean().item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            on_checkpoint(step, model)
    return model, mask_total / steps


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(x), dim=-1)


def evaluate(model: torch.nn.Module, split: Split, which: np.ndarray) -> dict:
    """Balanced accuracy, minority and rarest-class recall, and each class's recall on `which`."""
    y_pred = predict(model, split.x[which]).argmax(dim=-1).numpy()
    metrics = classification_metrics(split.y[which].numpy(), y_pred, N_CLASSES)
    recall = per_class_recall(np.asarray(metrics["confusion"]))
    return {
        "balanced_accuracy": metrics["balanced_accuracy"],
        "accuracy": metrics["accuracy"],
        "minority_recall": float(np.mean([recall[c] for c in split.minority])),
        "rarest_recall": recall[split.class_order[-1]],
        "per_class_recall": recall,
    }


def run_arm(arm: str, split: Split, gamma: float, seed: int, lr: float, steps: int, s: Settings) -> dict:
    """One arm on one draw; for CReST and CReST+ every generation's labeled set, selection and test metrics."""
    generations = s.generations if arm in ("crest", "crest_plus") else 1
    unlabeled_weight = 0.0 if arm == "supervised" else s.unlabeled_weight
    rates = selection_rates(split.labeled_counts, s.alpha)
    x_unl, y_unl = split.x[split.unlabeled], split.y[split.unlabeled]
    x_lab, y_lab = split.x[split.labeled], split.y[split.labeled]
    records = []
    for g in range(generations):
        target = None
        if arm == "crest_plus":  # pulled toward the original labeled distribution, less sharply each generation
            target = alignment_target(split.labeled_counts, alignment_temperature(g, generations, s.t_min))
        model, mask_rate = train_generation(x_lab, y_lab, x_unl, s, lr, steps, training_seed(arm, gamma, seed, g),
                                            unlabeled_weight, target)  # fmt: skip
        record = {"generation": g + 1, "labeled": len(x_lab), "mask_rate": mask_rate,
                  "test": evaluate(model, split, split.test)}  # fmt: skip
        if target is not None:
            record["alignment_target"] = target.tolist()
        if g + 1 < generations:  # the last model's pseudo-labels would feed no generation
            confidence, predicted = predict(model, x_unl).max(dim=-1)
            chosen = select_pseudo_labels(predicted.numpy(), confidence.numpy(), rates)
            idx = torch.tensor([i for i, _ in chosen], dtype=torch.long)
            pseudo = torch.tensor([c for _, c in chosen], dtype=torch.long)
            record["predicted_per_class"] = np.bincount(predicted.numpy(), minlength=N_CLASSES).tolist()
            record["added_per_class"] = np.bincount(pseudo.numpy(), minlength=N_CLASSES).tolist()
            record["added_precision"] = float((y_unl[idx] == pseudo).float().mean()) if len(chosen) else None
            # L_{g+1} = L + the chosen samples with their pseudo-labels; they stay in U
            x_lab = torch.cat([split.x[split.labeled], x_unl[idx]])
            y_lab = torch.cat([split.y[split.labeled], pseudo])
        records.append(record)
    return {"arm": arm, "gamma": gamma, "seed": seed, "lr": lr, "steps": steps, "rates": rates.tolist(),
            "labeled_counts": split.labeled_counts, "class_order": split.class_order,
            "test": records[-1]["test"], "generations": records}  # fmt: skip


def validation_grid(arm: str, split: Split, gamma: float, seed: int, s: Settings) -> dict:
    """Validation balanced accuracy at every (lr, steps) of the grid; steps read along one constant-lr run."""
    out = {}
    for lr in s.lr_grid:
        found = {}

        def note(step, model, found=found):
            found[step] = evaluate(model, split, split.val)["balanced_accuracy"]

        train_generation(split.x[split.labeled], split.y[split.labeled], split.x[split.unlabeled], s, lr,
                         max(s.steps_grid), training_seed(arm, gamma, seed, 0),
                         0.0 if arm == "supervised" else s.unlabeled_weight,
                         on_checkpoint=note, checkpoints=tuple(s.steps_grid))  # fmt: skip
        out[str(lr)] = {str(k): v for k, v in found.items()}
    return out


def choose(grids: list[dict], s: Settings) -> tuple[float, int, float]:
    """The (lr, steps) with the best mean validation balanced accuracy over seeds (ties: the earlier in the grid)."""
    best = None
    for lr in s.lr_grid:
        for steps in s.steps_grid:
            score = float(np.mean([grid[str(lr)][str(steps)] for grid in grids]))
            if best is None or score > best[2] + 1e-12:
                best = (lr, steps, score)
    return best


# ---- report ------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "min": float(np.min(values)), "max": float(np.max(values)), "values": values}  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    out = {key: spread([r["test"][key] for r in runs]) for key in ("balanced_accuracy", "minority_recall",
                                                                   "rarest_recall")}  # fmt: skip
    n_gen = len(runs[0]["generations"])
    if n_gen > 1:
        out["per_generation_balanced_accuracy"] = [
            spread([r["generations"][g]["test"]["balanced_accuracy"] for r in runs]) for g in range(n_gen)
        ]
        out["per_generation_minority_recall"] = [
            spread([r["generations"][g]["test"]["minority_recall"] for r in runs]) for g in range(n_gen)
        ]
    return out


def markdown(summary: dict, chosen: dict) -> str:
    def cell(v: dict) -> str:
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f} ({100 * v['min']:.1f}-{100 * v['max']:.1f})"

    lines = ["| gamma | arm | lr, steps/gen | balanced acc. | minority recall | rarest-class recall |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for gamma, arms in summary.items():
        for arm, v in arms.items():
            lr, steps = chosen[gamma][arm]["lr"], chosen[gamma][arm]["steps"]
            lines.append(f"| {gamma} | {arm} | {lr:g}, {steps} | {cell(v['balanced_accuracy'])} | "
                         f"{cell(v['minority_recall'])} | {cell(v['rarest_recall'])} |")  # fmt: skip
    n_gen = max(len(v.get("per_generation_balanced_accuracy", [])) for arms in summary.values() for v in arms.values())
    lines += ["", "Balanced accuracy after each generation (mean ± std over seeds, %):", "",
              "| gamma | arm | " + " | ".join(f"g{g + 1}" for g in range(n_gen)) + " |",
              "|---|---|" + "---|" * n_gen]  # fmt: skip
    for gamma, arms in summary.items():
        for arm, v in arms.items():
            if "per_generation_balanced_accuracy" in v:
                cells = [f"{100 * p['mean']:.1f} ± {100 * p['std']:.1f}" for p in v["per_generation_balanced_accuracy"]]
                lines.append(f"| {gamma} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_record(d: Split) -> dict:
    return {"labeled_counts": d.labeled_counts, "class_order": d.class_order, "labeled": len(d.labeled),
            "unlabeled": len(d.unlabeled), "test": len(d.test), "val": len(d.val),
            "unlabeled_counts": np.bincount(d.y[d.unlabeled].numpy(), minlength=N_CLASSES).tolist()}  # fmt: skip


def machine() -> dict:
    model_name = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import sklearn

    return {"platform": platform.platform(), "cpu": model_name, "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
            "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg()}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from records import source_commit

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gammas", type=float, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is the fastest for this tiny MLP)")
    p.add_argument("--lr-grid", type=float, nargs="+", default=Settings().lr_grid)
    p.add_argument("--steps-grid", type=int, nargs="+", default=Settings().steps_grid)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s, started = Settings(lr_grid=args.lr_grid, steps_grid=sorted(args.steps_grid)), time.perf_counter()
    info = {"command": "nice -n 10 .venv/bin/python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M %z"), "commit": source_commit(), "machine": machine(),
            "settings": asdict(s)}  # fmt: skip
    x, y = load_pool()
    summary, chosen, runs, grids, splits = {}, {}, [], {}, {}
    for gamma in args.gammas:
        key = f"{gamma:g}"
        draws = {seed: make_split(x, y, gamma, seed, s) for seed in args.seeds}
        splits[key] = {str(seed): split_record(d) for seed, d in draws.items()}
        grids[key], chosen[key] = {}, {}
        for arm in ("supervised", "fixmatch"):
            grids[key][arm] = {str(seed): validation_grid(arm, d, gamma, seed, s) for seed, d in draws.items()}
            lr, steps, score = choose(list(grids[key][arm].values()), s)
            chosen[key][arm] = {"lr": lr, "steps": steps, "val_balanced_accuracy": score}
            print(f"gamma {key} {arm}: lr {lr:g}, {steps} steps (validation balanced accuracy {score:.3f})", flush=True)
        for arm in ("crest", "crest_plus"):  # a CReST generation is a FixMatch run: FixMatch's settings
            chosen[key][arm] = {**chosen[key]["fixmatch"], "from": "fixmatch"}
        summary[key] = {}
        for arm in ARMS:
            arm_runs = []
            for seed, d in draws.items():
                run = run_arm(arm, d, gamma, seed, chosen[key][arm]["lr"], chosen[key][arm]["steps"], s)
                arm_runs.append(run)
                print(f"gamma {key} {arm} seed {seed}: balanced accuracy {run['test']['balanced_accuracy']:.3f}, "
                      f"minority recall {run['test']['minority_recall']:.3f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
            runs += arm_runs
            summary[key][arm] = summarize(arm_runs)
    table = markdown(summary, chosen)
    info["machine"]["load_average_end"] = os.getloadavg()
    info["seconds"] = round(time.perf_counter() - started, 1)
    result = {**info, "gammas": args.gammas, "seeds": args.seeds, "splits": splits, "validation_grid": grids,
              "chosen": chosen, "summary": summary, "runs": runs, "table": table}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table)
    print(f"\n{info['seconds'] / 60:.1f} min; written: {args.out}")


if __name__ == "__main__":
    main()
