"""Benchmark lmforge's classifier fine-tuning: quality over seeds, and the training loop's own overhead.

--part quality   MiniLM on SST-2 dev: the recipes finetune/minilm_sst2 and lora/minilm_sst2 (LoRA r=8 on
                 query and value), run in-process for each seed, alternating the methods so that machine
                 noise hits both. Reports accuracy (mean, sample std, min, max), macro-F1, parameter
                 counts, steps and seconds per optimizer step (`train_seconds` of final.json: forward,
                 backward and optimizer only), the LoRA-minus-full accuracy gap and the step-time ratio.
--part overhead  MiniLM full fine-tuning, same model init and the same batches, each run --warmup untimed
                 optimizer steps and then --steps timed ones:
                   lmforge      the real recipe; (train_seconds of a run of warmup+steps steps minus that of a
                                run of warmup steps) / steps
                   handwritten  a minimal PyTorch loop (collate, forward, cross-entropy, backward, clip,
                                AdamW, LambdaLR, zero_grad), perf_counter around the timed steps
                   trainer      transformers.Trainer with a sequential sampler over the same examples; time
                                between the on_step_end callbacks of step `warmup` and of the last step
                 How it times (benchmarks/timing.py): every run is measured afresh (nothing is reused).
                 `timing.time_rounds` runs one warm-up round of all three implementations, never counted
                 or stored, then --rounds (at least 3) measured rounds, the starting implementation
                 rotating from round to round; each run reports its own s/step (the clocks above, which
                 leave out model loading). The 1-minute load average is read at the start and end of every
                 run; a run above --max-load (default: the number of CPUs plus one half) is not written, and one line
                 says so. Reports the median s/step per implementation with min-max and interquartile
                 range over the written runs, and the ratios of medians lmforge/handwritten (target
                 <= 1.05) and lmforge/Trainer. If every run is refused, the stored overhead entry is left
                 as it was. Runs on the default device (CPU here; CUDA_VISIBLE_DEVICES= forces CPU).

Results are merged into benchmarks/finetune/results.json, or --results (the other part's entry is kept).

Full benchmark, from the repository root:
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune/bench.py --part all
Quick checks:
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune/bench.py --part quality --seeds 1 --set train.epochs=1
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune/bench.py --part overhead --steps 2 --warmup 1 \
      --results /tmp/finetune-overhead.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from lmforge.cli.main import find_recipe, load_run_config
from lmforge.registry import METHODS, resolve

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared timing rules
import timing  # noqa: E402

WORK = HERE / "work"
RESULTS = HERE / "results.json"
QUALITY_RECIPES = ["finetune/minilm_sst2", "lora/minilm_sst2"]
OVERHEAD_RECIPE = "finetune/minilm_sst2"
IMPLEMENTATIONS = ["lmforge", "handwritten", "trainer"]


def provenance() -> dict:
    """Machine, date and the exact command line, recorded with each part's results."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return {
        "machine": {"device": device, "torch": torch.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python " + shlex.join(sys.argv),
    }


def run_recipe(name: str, overrides: list[str], run_dir: Path) -> dict:
    """Run a recipe in-process in a fresh `run_dir`; returns its final.json plus the model name."""
    cfg = load_run_config(find_recipe(name), overrides)
    shutil.rmtree(run_dir, ignore_errors=True)
    resolve(METHODS[cfg.method].recipe)(cfg, run_dir, False)
    gc.collect()
    return {**json.loads((run_dir / "final.json").read_text()), "model": cfg.model.name}


# ---- part 1: quality over seeds -------------------------------------------------------------------


def quality(seeds: list[int], sets: list[str]) -> dict:
    rows = []
    for seed in seeds:
        for recipe in QUALITY_RECIPES:  # alternate: finetune s1, lora s1, finetune s2, ...
            method = recipe.split("/")[0]
            final = run_recipe(recipe, [f"train.seed={seed}", *sets], WORK / f"{method}-seed{seed}")
            rows.append(
                {
                    "method": method,
                    "model": final["model"],
                    "seed": seed,
                    "accuracy": final["metrics"]["accuracy"],
                    "macro_f1": final["metrics"]["macro_f1"],
                    "trainable_parameters": final["trainable_parameters"],
                    "total_parameters": final["total_parameters"],
                    "steps": final["steps"],
                    "train_seconds": final["train_seconds"],
                    "s_per_step": final["train_seconds"] / final["steps"],
                }
            )
    summary = {}
    for recipe in QUALITY_RECIPES:
        method = recipe.split("/")[0]
        own = [r for r in rows if r["method"] == method]
        acc = [r["accuracy"] for r in own]
        summary[method] = {
            "runs": len(own),
            "accuracy_mean": statistics.fmean(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,  # sample std
            "accuracy_min": min(acc),
            "accuracy_max": max(acc),
            "macro_f1_mean": statistics.fmean([r["macro_f1"] for r in own]),
            "s_per_step_mean": statistics.fmean([r["s_per_step"] for r in own]),
            **{k: own[0][k] for k in ("trainable_parameters", "total_parameters")},
        }
    summary["lora_minus_full_accuracy"] = summary["lora"]["accuracy_mean"] - summary["finetune"]["accuracy_mean"]
    summary["lora_over_full_step_time"] = summary["lora"]["s_per_step_mean"] / summary["finetune"]["s_per_step_mean"]
    return {**provenance(), "seeds": seeds, "overrides": sets, "runs": rows, "summary": summary}


def print_quality(q: dict) -> None:
    print(f"\nquality: {q['runs'][0]['model']}, SST-2 dev, seeds {q['seeds']}, on {q['machine']['device']}")
    print(
        f"{'method':<9} {'accuracy mean':>13} {'std':>7} {'min':>7} {'max':>7} {'macro-F1':>9} "
        f"{'s/step':>8} {'trainable':>12} {'total':>12}"
    )
    for method in ("finetune", "lora"):
        s = q["summary"][method]
        std = f"{s['accuracy_std']:.4f}" if s["accuracy_std"] is not None else "-"
        print(
            f"{method:<9} {s['accuracy_mean']:>13.4f} {std:>7} {s['accuracy_min']:>7.4f} {s['accuracy_max']:>7.4f} "
            f"{s['macro_f1_mean']:>9.4f} {s['s_per_step_mean']:>8.4f} {s['trainable_parameters']:>12,} "
            f"{s['total_parameters']:>12,}"
        )
    s = q["summary"]
    print(
        f"LoRA - full accuracy: {s['lora_minus_full_accuracy']:+.4f}; "
        f"LoRA / full step time: {s['lora_over_full_step_time']:.3f}"
    )


# ---- part 2: loop overhead ------------------------------------------------------------------------


class Workload:
    """The data, batches and settings that all three implementations share."""

    def __init__(self, n_batches: int) -> None:
        from lmforge.core.loop import epoch_batches
        from lmforge.data.classify import encode
        from lmforge.data.files import load_task
        from lmforge.models.classifier import load_tokenizer

        self.cfg = load_run_config(find_recipe(OVERHEAD_RECIPE), [])
        d, train = self.cfg.data, self.cfg.train
        task = load_task(d.train, d.eval, d.text_column, d.label_column, d.max_train_examples, d.max_eval_examples)
        self.labels = task.labels
        tokenizer = load_tokenizer(self.cfg.model.name)
        self.pad_id = tokenizer.pad_token_id
        self.ids = encode(tokenizer, task.train.texts, self.cfg.model.max_length)
        index = {label: i for i, label in enumerate(task.labels)}
        self.targets = [index[x] for x in task.train.labels]
        self.batches: list[list[int]] = []
        epoch = 0
        while len(self.batches) < n_batches:  # lmforge's order: epoch 0's batches, then epoch 1's, ...
            self.batches += epoch_batches([len(x) for x in self.ids], train, epoch)
            epoch += 1
        self.batches = self.batches[:n_batches]
        if any(len(b) != train.batch_size for b in self.batches):
            raise SystemExit("a partial batch falls inside the timed steps; change --steps or --warmup")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def model(self):
        from lmforge.core.loop import seed_everything
        from lmforge.models.classifier import load_classifier

        seed_everything(self.cfg.train.seed)
        model, _ = load_classifier(self.cfg.model.name, self.labels, self.cfg.train.seed, self.cfg.model.dropout)
        return model.to(self.device).train()


def time_lmforge(w: Workload, warmup: int, steps: int) -> float:
    fixed = ["train.eval_every=100000", "train.save_every=100000", "data.max_eval_examples=32"]
    seconds = {}
    for n in (warmup + steps, warmup):
        run_dir = WORK / f"overhead-lmforge-{n}"
        seconds[n] = run_recipe(OVERHEAD_RECIPE, [f"train.max_steps={n}", *fixed], run_dir)["train_seconds"]
        shutil.rmtree(run_dir)
    return (seconds[warmup + steps] - seconds[warmup]) / steps


def time_handwritten(w: Workload, warmup: int, steps: int) -> float:
    import torch.nn.functional as F

    from lmforge.data.classify import collate

    train = w.cfg.train
    model = w.model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    total, ramp = warmup + steps, int(round(train.warmup_ratio * (warmup + steps)))

    def linear(s: int) -> float:  # linear warmup, then linear decay to zero
        return (s + 1) / (ramp + 1) if s < ramp else max(0.0, (total - s) / max(1, total - ramp))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear)
    started = 0.0
    for step, batch in enumerate(w.batches):
        if step == warmup:
            started = time.perf_counter()
        inputs = collate([w.ids[i] for i in batch], w.pad_id, w.device)
        labels = torch.tensor([w.targets[i] for i in batch], device=w.device)
        loss = F.cross_entropy(model(**inputs).logits, labels)
        loss.backward()
        loss.item()  # lmforge reads the loss every step too
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


def time_trainer(w: Workload, warmup: int, steps: int) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from lmforge.data.classify import collate

    order = [i for batch in w.batches for i in batch]

    class Examples(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(order)

        def __getitem__(self, k: int) -> dict:
            return {"input_ids": w.ids[order[k]], "label": w.targets[order[k]]}

    def pad(items: list[dict]) -> dict:
        out = collate([x["input_ids"] for x in items], w.pad_id)
        return {**out, "labels": torch.tensor([x["label"] for x in items])}

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    train, clock = w.cfg.train, StepClock()
    out_dir = WORK / "overhead-trainer"
    shutil.rmtree(out_dir, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=train.batch_size,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        warmup_steps=int(round(train.warmup_ratio * (warmup + steps))),
        max_grad_norm=train.max_grad_norm,
        optim="adamw_torch",  # the same optimizer implementation as the other two
        max_steps=warmup + steps,
        train_sampling_strategy="sequential",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=100_000,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        use_cpu=w.device == "cpu",
        seed=train.seed,
    )
    Trainer(model=w.model(), args=args, train_dataset=Examples(), data_collator=pad, callbacks=[clock]).train()
    shutil.rmtree(out_dir, ignore_errors=True)
    # From the end of step `warmup` to the end of the last step: batch fetch and collate included, as in lmforge.
    return (clock.ends[warmup + steps - 1] - clock.ends[warmup - 1]) / steps


def overhead(warmup: int, steps: int, rounds: int, max_load: float) -> dict | None:
    """The three implementations timed by timing.time_rounds; None when every run was refused for load."""
    if warmup < 1 or steps < 1:
        raise SystemExit("--warmup and --steps must be at least 1")
    w = Workload(warmup + steps)
    timers = {"lmforge": time_lmforge, "handwritten": time_handwritten, "trainer": time_trainer}

    def arm(name: str):
        def call() -> float:
            s_per_step = timers[name](w, warmup, steps)  # the run's own clock: model loading left out
            gc.collect()
            print(f"overhead: {name:<11} {s_per_step:.4f} s/step", flush=True)
            return s_per_step

        return call

    timed = timing.time_rounds({name: arm(name) for name in IMPLEMENTATIONS}, rounds)
    print("overhead order:", " ".join(timed.order()), flush=True)
    rows, refused = [], []
    for r in timed.rows:
        line = timing.load_refusal(f"overhead round {r.round + 1} {r.arm}", r.load_start, r.load_end, max_load)
        if line:
            print(line, flush=True)
            refused.append(line)
            continue
        load = {"start": r.load_start, "end": r.load_end}
        rows.append({"round": r.round + 1, "implementation": r.arm, "s_per_step": r.seconds, "load_1min": load})
    if not rows:
        return None
    spread = timing.summarize(timed.seconds(max_load))
    for name in IMPLEMENTATIONS:
        kept = spread.get(name, {}).get("rounds", 0)
        if kept < timing.MIN_ROUNDS:
            print(f"overhead: {name} has {kept} written run(s), fewer than {timing.MIN_ROUNDS}", flush=True)
    ratios = timing.median_ratios(spread, [("lmforge", "handwritten"), ("lmforge", "trainer")])
    summary = {
        "median_s_per_step": {name: s["median"] for name, s in spread.items()},
        "spread_s_per_step": spread,  # per implementation: rounds, median, min, max, q1, q3, iqr
        "lmforge_over_handwritten": ratios.get("lmforge / handwritten"),
        "lmforge_over_trainer": ratios.get("lmforge / trainer"),
        "target_lmforge_over_handwritten": 1.05,
    }
    return {
        **provenance(),
        "warmup": warmup,
        "steps": steps,
        "rounds": rounds,
        "warmup_rounds": 1,
        "max_load": max_load,
        "device_used": w.device,
        "order": timed.order(),
        "runs": rows,
        "refused": refused,
        "summary": summary,
    }


def print_overhead(o: dict) -> None:
    s = o["summary"]
    print(
        f"\noverhead: MiniLM full fine-tuning on {o['device_used']} ({o['machine']['device']}), "
        f"{o['steps']} steps after {o['warmup']} warmup, {o['rounds']} rounds after a warm-up round"
    )
    print("\n".join("  " + line for line in timing.format_summary(s["spread_s_per_step"], unit_name="s/step")))
    ratio = s["lmforge_over_handwritten"]
    if ratio is not None:
        verdict = "ok" if ratio <= s["target_lmforge_over_handwritten"] else "over target"
        print(f"  lmforge / handwritten: {ratio:.3f} (ratio of medians; target <= 1.05: {verdict})")
    if s["lmforge_over_trainer"] is not None:
        print(f"  lmforge / Trainer:     {s['lmforge_over_trainer']:.3f} (ratio of medians)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", choices=["quality", "overhead", "all"], default="all", help="what to run")
    parser.add_argument("--seeds", default="1,2,3", help="quality: comma-separated seeds (default 1,2,3)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="quality: config override for both methods, repeatable (e.g. train.epochs=1)",
    )
    parser.add_argument("--steps", type=int, default=40, help="overhead: timed optimizer steps (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="overhead: untimed steps first (default 5)")
    parser.add_argument(
        "--rounds", type=int, default=timing.MIN_ROUNDS, help="overhead: measured rounds after the warm-up (>= 3)"
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=timing.default_max_load(),
        help="overhead: a run timed above this 1-minute load average is not written (default: CPUs + 0.5)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results JSON (default: %(default)s)")
    args = parser.parse_args()
    if args.rounds < timing.MIN_ROUNDS:
        parser.error(f"--rounds {args.rounds}: at least {timing.MIN_ROUNDS} measured rounds")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    written = False
    if args.part in ("quality", "all"):
        results["quality"] = quality([int(s) for s in args.seeds.split(",")], args.sets)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        written = True
    measured = None
    if args.part in ("overhead", "all"):
        measured = overhead(args.warmup, args.steps, args.rounds, args.max_load)
        if measured is None:
            print("overhead: every run refused for load; the stored overhead entry is left as it was")
        else:
            results["overhead"] = measured
            args.results.write_text(json.dumps(results, indent=2) + "\n")
            written = True
    if "quality" in results and args.part != "overhead":
        print_quality(results["quality"])
    if measured is not None:  # only figures measured now, never a stored entry
        print_overhead(measured)
    if written:
        print(f"\nwritten: {args.results}")


if __name__ == "__main__":
    main()
