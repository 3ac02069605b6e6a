"""Benchmark TinyBERT (Jiao et al. 2020) on SST-2 dev: teacher vs student, and the paper's ablations.

--part speed    (speed.py) teacher (MiniLM classifier, 22.7 M parameters) and student (the recipe's 3 layers x 192
                hidden) side by side in one process: latency at batch 1 (the median over --singles single
                dev sentences, each timed alone) and throughput at batch 32 (all dev sentences, sorted by
                length, in batches of 32: sentences per second). Weights do not change the speed, so no
                training is needed. CPU unless CUDA is visible.
                How it times (benchmarks/timing.py): afresh on every run. `timing.time_rounds` runs four
                arms (teacher and student at batch 1 and 32): a warm-up round, never counted or stored,
                then --rounds (at least 3) rounds, the starting arm rotating. A batch-1 arm's seconds in a
                round are the median of its single-sentence latencies, a batch-32 arm's its pass over the
                dev set. The 1-minute load average is read at the start and end of every call; a call
                above --max-load (default: the CPU count plus one half) is not written, and one line says so (if every
                one is, the stored entry stays). Reported: median, min-max and IQR over rounds per arm;
                student/teacher throughput and teacher/student latency are ratios of medians.
--part quality  a chain of stages, each a real `lmforge run` in its own process:
                  teacher          finetune/minilm_sst2
                  general          tinybert/general_minilm (the student's general distillation)
                  tinybert         tinybert/minilm_sst2: from `general`, augmented data, intermediate
                                   layers then prediction layer
                  no_augmentation  the same without the augmented copies
                  no_general       the same from a random student (no general distillation)
                  prediction_only  no intermediate-layer losses: plain knowledge distillation
                  labels_only      the `general` student fine-tuned on the labels alone (no teacher)
                Every student row runs the same number of optimizer steps: the tinybert row's (one
                pass over the augmented data is several over the plain data, so the rows without
                augmentation get `train.max_steps` set to it). Each row's learning rate is chosen
                from --lrs (the same grid for every row) by accuracy on a validation split carved
                from SST-2 train (--val-size sentences, seeded; the row trains on the rest), one
                run per rate at seed --tune-seed; SST-2 dev is only reported, never used to choose.
                Then each row runs at its rate over --seeds on the full training set.

Each stage is a child run in WORK (core/stages.py, `child_run`): a finished one is reused, an
interrupted one resumed, a fresh one started, so an interrupted benchmark picks up where it stopped.
A stage is reused only when made with the same settings: its exact command, resolved config and
inputs (the stages and data files it reads) are recorded in `WORK/<stage>.stage.json`; a stage whose
run folder differs from what this command asks is refused with the differing settings named. The
check is stricter than core/stages.py's `finished_stage`: a run folder with no record is refused,
not reused, and the settings compared are those of the run's own config.yaml, read by the code of now.

--set KEY=VALUE overrides every stage's config (keys of another method's section are dropped);
--set STAGE:KEY=VALUE only that stage's, STAGE one of teacher, general, student.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tinybert/bench.py --part speed
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tinybert/bench.py --part speed --rounds 3 --singles 2 \
      --results /tmp/tinybert-speed.json    (the quickest check)
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tinybert/bench.py --part quality
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
import timing  # noqa: E402

ROOT = HERE.parents[1]
ROWS = {
    "tinybert": [],
    "no_augmentation": ["tinybert.augment=false"],
    "no_general": ["tinybert.init_from="],
    "prediction_only": ["tinybert.intermediate_share=0"],
}


def provenance() -> dict:
    from records import benchmark_provenance

    return benchmark_provenance()


# ---- quality ------------------------------------------------------------------------------------

STAGES = ("teacher", "general", "student")
LABELS_ONLY = "labels_only"
SPLIT_SEED = 2024  # which SST-2 training sentences form the validation split does not depend on --seeds
PROFILES = {  # overrides that size the chain; every one lands in the stages' commands and configs
    "full": [],  # the recipes' defaults
    "cpu": ["general:train.epochs=1", "student:train.epochs=1", "tinybert.augment_copies=1"],
    "smoke": [
        "model.name=tiny-bert",
        "tinybert.teacher=tiny-bert",
        "tinybert.student.layers=1",
        "tinybert.student.hidden=32",
        "tinybert.student.heads=2",
        "tinybert.student.intermediate=64",
        "tinybert.held_out=16",
        "tinybert.augment_copies=1",
        "general:train.max_steps=4",
        "teacher:train.max_steps=10",
        "student:train.epochs=1",
        "data.max_train_examples=64",
        "data.max_eval_examples=32",
        "train.batch_size=8",
    ],
}


def stage_overrides(sets: list[str], stage: str, method: str) -> list[str]:
    """The --set items for `stage` (plain ones and `stage:` ones), keeping only keys `method` has."""
    out = []
    for item in sets:
        scope, sep, rest = item.partition(":")
        if sep and scope in STAGES:
            if scope != stage:
                continue
            item = rest
        if item.split(".")[0] in ("model", "data", "train", method):
            out.append(item)
    return out


def check_sets(sets: list[str]) -> None:
    for item in sets:
        scope, sep, rest = item.partition(":")
        key = (rest if sep and scope in STAGES else item).partition("=")[0]
        if "=" not in item or key.split(".")[0] not in ("model", "data", "train", "tinybert", "finetune"):
            raise SystemExit(f"--set {item!r}: expected [teacher:|general:|student:]SECTION.KEY=VALUE")


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolved(source: str | Path, overrides: list[str]) -> dict:
    """The fully resolved config, as `lmforge run` would write it to config.yaml."""
    from lmforge.cli.main import find_recipe
    from lmforge.registry import load_run_config

    path = source if isinstance(source, Path) else find_recipe(source)
    return flat(load_run_config(path, overrides).to_dict())


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() + ("+uncommitted changes in src/" if dirty.stdout.strip() else "")


class Stages:
    """Runs each stage once and records how; refuses to reuse a stage made otherwise."""

    def __init__(self, work: Path):
        self.work = work
        self.records: dict[str, dict] = {}

    def run(self, name: str, recipe: str, overrides: list[str], inputs: dict[str, Path]) -> dict:
        from lmforge.core.stages import FINISHED, child_run

        run_dir, record_path = self.work / name, self.work / f"{name}.stage.json"
        last = {item.partition("=")[0]: i for i, item in enumerate(overrides)}
        overrides = [item for i, item in enumerate(overrides) if last[item.partition("=")[0]] == i]  # last wins
        asked = resolved(recipe, overrides)
        used = {key: fingerprint(path) for key, path in inputs.items()}
        command = ["lmforge", "run", recipe, *overrides, "--run-dir", str(run_dir)]
        if run_dir.exists():
            self._check_reuse(name, run_dir, record_path, asked, used)
            record = json.loads(record_path.read_text())
        else:
            record = {"stage": name, "command": command, "inputs": used, "commit": git_commit(), "settings": asked}
            record_path.parent.mkdir(parents=True, exist_ok=True)
            record_path.write_text(json.dumps(record, indent=1) + "\n")
        child = child_run(self.work, name)  # FRESH, INTERRUPTED (resume it) or FINISHED (reuse it)
        if child.state != FINISHED:
            argv = (
                [sys.executable, "-m", "lmforge", "run", recipe, "--resume", "--run-dir", str(run_dir)]
                if child.resume
                else [sys.executable, "-m", *command]
            )
            print(f"running {name}: {' '.join(command)}", flush=True)
            started = time.perf_counter()
            with open(self.work / f"{name}.log", "a") as log:
                done = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise SystemExit(f"stage {name} failed (exit {done.returncode}); see {self.work / f'{name}.log'}")
            record.setdefault("wall_seconds", 0.0)
            record["wall_seconds"] += round(time.perf_counter() - started, 1)
            record["finished"] = time.strftime("%Y-%m-%d %H:%M %z")
            record_path.write_text(json.dumps(record, indent=1) + "\n")
        else:
            print(f"reused {name} (same settings): {' '.join(record['command'])}", flush=True)
        final = json.loads((run_dir / "final.json").read_text())
        self.records[name] = {
            "command": " ".join(record["command"]),
            "commit": record["commit"],
            "inputs": record["inputs"],
            "steps": final["steps"],
            "train_seconds": final["train_seconds"],
            "finished": record.get("finished"),
        }
        return final

    @staticmethod
    def _check_reuse(name: str, run_dir: Path, record_path: Path, asked: dict, used: dict) -> None:
        fix = f"delete {run_dir} (and the stages made from it) or pass another --work"
        if not record_path.is_file():
            raise SystemExit(f"stage {name}: {run_dir} exists with no record of the command that made it; {fix}")
        record = json.loads(record_path.read_text())
        config = run_dir / "config.yaml"
        made = resolved(config, []) if config.is_file() else record["settings"]
        differ = [
            f"{key}={made.get(key)!r} (this command: {asked.get(key)!r})"
            for key in sorted(set(made) | set(asked))
            if made.get(key) != asked.get(key)
        ]
        differ += [f"input {key} has changed since" for key in sorted(used) if record["inputs"].get(key) != used[key]]
        if differ:
            raise SystemExit(f"stage {name}: {run_dir} was made with other settings: {'; '.join(differ)}; {fix}")


def carve_validation(work: Path, size: int) -> tuple[Path, Path]:
    """SST-2 train split in two by a seeded shuffle: `size` sentences to choose learning rates on,
    the rest to train on while choosing (jsonl files, original order kept)."""
    from lmforge.data.files import load_examples

    train = load_examples("sst2:train")
    order = list(range(len(train.texts)))
    random.Random(SPLIT_SEED).shuffle(order)
    held = set(order[:size])
    paths = work / "data" / "sst2-train-minus-validation.jsonl", work / "data" / "sst2-validation.jsonl"
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, keep in zip(paths, (lambda i: i not in held, lambda i: i in held)):
        rows = [{"text": t, "label": y} for i, (t, y) in enumerate(zip(train.texts, train.labels)) if keep(i)]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return paths


def student_run(stages, name, row, chain, sets, seed, lr, steps, data, inputs) -> dict:
    """One student row's run; `steps` (the tinybert row's) fixes the other rows' length."""
    if row == LABELS_ONLY:  # the general student fine-tuned on the labels alone, no teacher
        recipe = "finetune/minilm_sst2"
        overrides = [*stage_overrides(sets, "student", "finetune"), chain["student_folder"], "train.warmup_ratio=0.1"]
    else:
        recipe = "tinybert/minilm_sst2"
        overrides = [*stage_overrides(sets, "student", "tinybert"), *chain["tinybert"], *ROWS[row]]
    overrides += [*data, f"train.seed={seed}", f"train.lr={lr}"]
    if steps is not None:
        overrides.append(f"train.max_steps={steps}")
    final = stages.run(name, recipe, overrides, inputs)
    return {
        "row": row,
        "seed": seed,
        "lr": lr,
        "accuracy": final["metrics"]["accuracy"],
        "steps": final["steps"],
        "train_seconds": final["train_seconds"],
    }


def quality(
    work: Path, seeds: list[int], lrs: list[float], tune_seed: int, val_size: int, sets: list[str], save
) -> dict:
    stages = Stages(work)
    rows = [*ROWS, LABELS_ONLY]
    out: dict = {
        **provenance(),
        "settings": sets,
        "lrs": lrs,
        "tune_seed": tune_seed,
        "seeds": seeds,
        "validation": f"{val_size} sentences of sst2:train (seeded shuffle, seed {SPLIT_SEED})",
        "complete": False,
        "stages": stages.records,
    }
    teacher_dir, general_dir = work / "teacher", work / "general"
    teacher = stages.run("teacher", "finetune/minilm_sst2", stage_overrides(sets, "teacher", "finetune"), {})
    out["teacher_accuracy"] = teacher["metrics"]["accuracy"]
    general = stages.run("general", "tinybert/general_minilm", stage_overrides(sets, "general", "tinybert"), {})
    out["general"] = {"held_out_loss": general["metrics"]["held_out_loss"], "steps": general["steps"]}
    save(out)
    chain = {
        "tinybert": [f"tinybert.teacher={teacher_dir}", f"tinybert.init_from={general_dir}"],
        "student_folder": f"model.name={general_dir / 'final'}",
    }
    upstream = {"teacher": teacher_dir / "final.json", "general": general_dir / "final.json"}
    tune_train, validation = carve_validation(work, val_size)
    tune_inputs = {**upstream, "train_data": tune_train, "eval_data": validation}
    tune_data = [f"data.train={tune_train}", f"data.eval={validation}"]

    sweep: dict[str, dict[str, float]] = {row: {} for row in rows}
    out["sweep"], steps = sweep, None
    for row in rows:  # the tinybert row first: its step count is every row's
        for lr in lrs:
            run = student_run(
                stages,
                f"tune-{row}-lr{lr:g}",
                row,
                chain,
                sets,
                tune_seed,
                lr,
                None if row == "tinybert" else steps,
                tune_data,
                tune_inputs,
            )
            steps = run["steps"] if row == "tinybert" else steps
            sweep[row][f"{lr:g}"] = run["accuracy"]
            save(out)
    chosen = {row: max(lrs, key=lambda lr: (sweep[row][f"{lr:g}"], -lr)) for row in rows}  # ties: the lower rate
    out["chosen_lr"] = chosen

    runs: list[dict] = []
    out["runs"], steps = runs, None
    for seed in seeds:
        for row in rows:
            runs.append(
                student_run(
                    stages,
                    f"{row}-s{seed}",
                    row,
                    chain,
                    sets,
                    seed,
                    chosen[row],
                    None if row == "tinybert" else steps,
                    [],
                    upstream,
                )
            )
            steps = runs[-1]["steps"] if row == "tinybert" else steps
            save(out)
    summary = {}
    for row in rows:
        acc = [r["accuracy"] for r in runs if r["row"] == row]
        mean = statistics.fmean(acc)
        summary[row] = {
            "lr": chosen[row],
            "validation_accuracy": sweep[row][f"{chosen[row]:g}"],
            "seeds": len(acc),
            "accuracy_mean": mean,
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
            "share_of_teacher": mean / out["teacher_accuracy"],
            "steps": sorted({r["steps"] for r in runs if r["row"] == row}),
        }
    out.update(summary=summary, complete=True)
    print(
        f"\nSST-2 dev: teacher accuracy {100 * out['teacher_accuracy']:.2f}; "
        f"general stage held-out loss {out['general']['held_out_loss']:.4f} ({out['general']['steps']} steps)"
    )
    print("| row | lr (validation accuracy) | steps | SST-2 dev accuracy mean ± std | share of teacher |")
    print("|---|---|---|---|---|")
    for row, s in summary.items():
        std = f" ± {100 * s['accuracy_std']:.2f}" if s["accuracy_std"] is not None else ""
        print(
            f"| {row} | {s['lr']:g} ({100 * s['validation_accuracy']:.2f}) | {s['steps']} | "
            f"{100 * s['accuracy_mean']:.2f}{std} | {100 * s['share_of_teacher']:.1f}% |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "quality"], required=True)
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu", help="quality: how the chain is sized")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--lrs", nargs="+", type=float, default=[5e-5, 1.6e-4, 5e-4], help="quality: the grid")
    parser.add_argument("--tune-seed", type=int, default=1, help="quality: the seed of the learning-rate runs")
    parser.add_argument("--val-size", type=int, default=872, help="quality: validation sentences carved from train")
    parser.add_argument("--rounds", type=int, default=4, help="speed: measured rounds after the warm-up (>= 3)")
    parser.add_argument("--max-load", type=float, default=timing.default_max_load(), help="speed: see above")
    parser.add_argument("--singles", type=int, default=200, help="speed: sentences timed at batch 1 per round")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="quality: the runs' folders")
    parser.add_argument(
        "--set", nargs="*", default=[], help="quality: [STAGE:]KEY=VALUE overrides, after the profile's"
    )
    parser.add_argument("--model", default="minilm", help="speed: the teacher model (a name or a folder)")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    from records import merge_benchmark_result

    if args.part == "speed":
        if args.rounds < timing.MIN_ROUNDS:
            parser.error(f"--rounds {args.rounds}: at least {timing.MIN_ROUNDS} measured rounds")
        from speed import speed

        result = speed(args.rounds, args.singles, args.model, args.max_load)
        if result is None:
            print("speed: every call refused for load; the stored speed entry is left as it was")
        else:
            merge_benchmark_result(args.results, "speed", result)
        return
    sets = [*PROFILES[args.profile], *args.set]
    check_sets(sets)
    key = "quality" if args.profile != "smoke" else "quality_smoke"
    result = quality(
        args.work.resolve(),
        args.seeds,
        args.lrs,
        args.tune_seed,
        args.val_size,
        sets,
        lambda partial: merge_benchmark_result(args.results, key, partial),
    )
    merge_benchmark_result(args.results, key, result)


if __name__ == "__main__":
    main()
