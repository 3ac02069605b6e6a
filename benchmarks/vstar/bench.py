"""Benchmark V-STaR (Hosseini et al., COLM 2024) and its baselines in one harness, Gemma 3 270M base.

For each task (--tasks gsm8k mbpp), three runs of the vstar recipe, each a real `lmforge run` in its
own process, kept in --work and reused when finished (an interrupted run resumes at its last stage).
The run folders live in runs/ and are committed without their model folders (.gitignore): a study
spans several sittings and a fresh clone, where a resumed run retrains the adapters it still needs
(the same seeds and data; on another machine not to the same bits) and reuses every sample,
candidate and score already written:
  vstar     vstar/gemma_<task> at the --profile sizes, with the ORM verifier: generators G^1 (= SFT)
            .. G^T (the STaR generators: V-STaR trains its generator exactly as STaR does), a DPO
            verifier and an ORM trained on D_VER of every round, N test candidates from every G^t
  vstar_t1  the same with T = 1: SFT + verifier (the verifier learns from G_SFT's samples only). Its
            round-1 stages and G^1's test candidates are copied from `vstar` before it starts: same
            settings and per-sample seeds, so they are what it would compute
  rft       RFT (Yuan et al. 2023): the same total samples (k x T per problem) from G_SFT in one round,
            then one generator on D_SFT + the correct ones (vstar.sample_last_generator=false); G_SFT
            and its test candidates are copied from `vstar`. Its DPO verifier, trained on that one
            round of samples, makes it the paper's "V-STaR [1 Iter]" as well, and scoring G_SFT's
            candidates it is the paper's Verification baseline at V-STaR's sample budget
Rows reported (test problems of the task, greedy-free: every number is over N sampled candidates):
  Pass@1 of SFT, of each STaR / V-STaR generator and of RFT; majority vote at k (GSM8K); Best-of-k of
  Verification (G_SFT's candidates scored by a DPO verifier trained on G_SFT's samples: at equal
  budget, k x T samples per problem from the rft run, and at T = 1, k samples, from vstar_t1), of
  V-STaR [1 iteration], of V-STaR (each test-time score: likelihood, mean likelihood, implicit
  reward) and of the ORM verifier on the same candidates; for MBPP also HumanEval: the final
  generator's N candidates per HumanEval problem, scored by the same verifiers.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vstar/bench.py --tasks gsm8k mbpp
Writes results.json (key PROFILE/TASK) and the Best-of-k charts best_of_k_PROFILE_TASK.svg beside it.

A run folder is reused only when it was made with the settings this command gives it (its
config.yaml); otherwise the bench stops and names the keys that differ. When only the verifiers'
settings differ (vstar.verifier.*, vstar.orm.*), --redo-verifiers keeps the generators' samples and
test candidates, moves the verifier outputs made with the old settings (scores, final.json, report,
config.yaml) into the run's superseded-N/ folder, and resumes the run with the new settings: G_SFT
is trained again (the models are not committed), then the verifiers, then the scores.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vstar/bench.py --pair-table 4
prints, for every run in --work, the DPO verifier's preference pairs with that cap and with none,
from the run's own samples (nothing is trained).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the shared records and timing helpers
from records import run_once  # noqa: E402

ROOT = HERE.parents[1]
# CPU sizes: a 270M model on two cores generates about 15 tokens/s in batches and trains about as fast
PROFILES = {
    "cpu": [
        # G_SFT learns from 128 references (32 taught a 270M model neither MBPP's format nor a single
        # correct program: 0 of 64 samples passed); each round samples the first 32 of them
        "data.max_train_examples=128",
        "vstar.query_problems=32",
        "vstar.iterations=2",
        "vstar.samples_per_problem=4",
        "vstar.test_problems=30",
        "vstar.test_samples=8",
        "vstar.ks=[1,2,4,8]",
        "vstar.generation_batch_size=16",  # 21 tokens/s against 14 at 8 (docs/causal_lm.md)
        # 99% of the training references fit (GSM8K p99 219 Gemma tokens, MBPP 253): a looping sample stops sooner
        "vstar.max_new_tokens=256",
    ],
    "smoke": [  # the whole harness in minutes, on tiny-gpt2 (numbers meaningless)
        "model.name=tiny-gpt2",
        "model.max_length=1024",
        "data.max_train_examples=4",
        "train.max_steps=1",
        "vstar.iterations=2",
        "vstar.samples_per_problem=2",
        "vstar.max_new_tokens=16",
        "vstar.test_problems=2",
        "vstar.test_samples=2",
        "vstar.ks=[1,2]",
        "vstar.target_modules=[c_attn,c_proj,c_fc]",
    ],
}


def setting(sets: list[str], key: str, default: str) -> str:
    return next((s.split("=", 1)[1] for s in reversed(sets) if s.startswith(key + "=")), default)


VERIFIER_KEYS = ("vstar.verifier.", "vstar.orm.")  # settings that change no generator, sample or candidate
# what a verifier made with other settings leaves behind; the samples, candidates and generators stay
VERIFIER_OUTPUTS = ["final.json", "report.html", "humaneval-scores.jsonl", "stages/scores-*.jsonl"]


def expected_config(task: str, sets: list[str]) -> str:
    from lmforge.cli.main import find_recipe
    from lmforge.registry import load_run_config

    return load_run_config(find_recipe(f"vstar/gemma_{task}"), sets).to_yaml()


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def changed_settings(saved: str, wanted: str) -> list[str]:
    """The dotted keys whose values differ between two config.yaml texts (a key one of them lacks
    differs too: a setting added since the run was made is one it did not have). The ORM's keys do
    not count where neither trains an ORM."""
    a, b = flat(yaml.safe_load(saved)), flat(yaml.safe_load(wanted))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    if not a.get("vstar.orm.enabled") and not b.get("vstar.orm.enabled"):
        changed = [k for k in changed if not k.startswith("vstar.orm.")]
    return changed


def check_settings(run_dir: Path, task: str, sets: list[str], redo_verifiers: bool) -> None:
    """Refuse to reuse a run folder made with other settings; with `redo_verifiers`, where only the
    verifiers' settings differ, set its verifier outputs aside and give it the new settings."""
    from lmforge.core.rundir import write_text_atomic

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    wanted = expected_config(task, sets)
    changed = changed_settings(saved.read_text(), wanted)
    if not changed:
        return
    if not (redo_verifiers and all(k.startswith(VERIFIER_KEYS) for k in changed)):
        hint = "add --redo-verifiers" if all(k.startswith(VERIFIER_KEYS) for k in changed) else "move it away"
        sys.exit(f"{run_dir}: made with other settings ({', '.join(changed)}); {hint} to run it with these")
    n = 1 + sum(1 for _ in run_dir.glob("superseded-*"))
    old = run_dir / f"superseded-{n}"
    (old / "stages").mkdir(parents=True)
    for pattern in ["config.yaml", *VERIFIER_OUTPUTS]:
        for path in run_dir.glob(pattern):
            path.rename(old / path.relative_to(run_dir))
    if (run_dir / "stage_metrics.json").is_file():  # the generators' entries stay until they are trained again
        shutil.copy(run_dir / "stage_metrics.json", old / "stage_metrics.json")
    (old / "changed.txt").write_text("settings changed after this: " + ", ".join(changed) + "\n")
    for path in [run_dir / "stages" / "verifier", run_dir / "stages" / "orm"]:  # models of the old settings
        shutil.rmtree(path, ignore_errors=True)
    for path in run_dir.glob("stages/verifier.reference-*.pt"):
        path.unlink()
    write_text_atomic(saved, wanted)
    print(f"{run_dir}: verifier outputs of the old settings moved to {old.name}/ ({', '.join(changed)})", flush=True)


def vstar_run(run_dir: Path, task: str, sets: list[str]) -> dict:
    resuming = (run_dir / "config.yaml").is_file()
    command = [sys.executable, "-m", "lmforge", "run", f"vstar/gemma_{task}", *([] if resuming else sets)]
    command += ["--resume"] if resuming else []
    run_once([*command, "--run-dir", str(run_dir)], run_dir / "final.json", run_dir.with_suffix(".log"), ROOT)
    keep_stage_metrics(run_dir)
    return json.loads((run_dir / "final.json").read_text())


def keep_stage_metrics(run_dir: Path) -> None:
    """Copy each trained stage's final.json (training seconds, held-out metrics) into the run folder's
    stage_metrics.json, which is committed: the stage folders hold the models and are not."""
    from lmforge.core.rundir import write_text_atomic

    found = {p.parent.name: json.loads(p.read_text()) for p in sorted((run_dir / "stages").glob("*/final.json"))}
    kept = run_dir / "stage_metrics.json"
    merged = {**(json.loads(kept.read_text()) if kept.is_file() else {}), **found}
    write_text_atomic(kept, json.dumps(merged, indent=1) + "\n")


ROUND_ONE = ["generator-1", "generator-1.jsonl"]  # G^1 = G_SFT: the same in every run of one task and profile
ROUND_ONE_TEST = ["test-1.jsonl", "test-1.timing.json"]  # G^1's test candidates: the same per-sample seeds
ROUND_ONE_SAMPLES = ["samples-1.jsonl", "samples-1.timing.json"]  # k samples per problem: only at the same k


def seed_round_one(source: Path, target: Path, task: str, sets: list[str], names: list[str]) -> None:
    """Give the run folder `target` those of `names` it lacks, finished stages of `source` computed with
    the same settings (a new `target` gets its own config.yaml; an existing one was checked against
    `sets` by `check_settings`), so that `lmforge run --resume` continues from them. A model folder
    (G_SFT) is copied only once finished: a fresh clone has none, and the first run to need it trains it."""
    from lmforge.core.rundir import write_text_atomic

    (target / "stages").mkdir(parents=True, exist_ok=True)
    for name in names:  # a stage `source` has not reached, or a model folder not kept, is left to `target`
        path, copy = source / "stages" / name, target / "stages" / name
        if copy.exists() or not path.exists() or (path.is_dir() and not (path / "final.json").is_file()):
            continue
        (shutil.copytree if path.is_dir() else shutil.copy)(path, copy)
    if not (target / "config.yaml").is_file():
        write_text_atomic(target / "config.yaml", expected_config(task, sets))


def task_rows(work: Path, task: str, sets: list[str], redo_verifiers: bool = False) -> dict:
    iterations = int(setting(sets, "vstar.iterations", "2"))
    k = int(setting(sets, "vstar.samples_per_problem", "4"))
    main_dir, main_sets = work / f"{task}-vstar", [*sets, "vstar.orm.enabled=true"]
    t1_dir, t1_sets = work / f"{task}-vstar_t1", [*sets, "vstar.iterations=1", "vstar.orm.enabled=true"]
    rft_dir = work / f"{task}-rft"
    rft_sets = [
        *sets,
        "vstar.iterations=2",
        f"vstar.samples_per_problem={k * iterations}",
        "vstar.sample_last_generator=false",
    ]
    for run_dir, run_sets in ((main_dir, main_sets), (t1_dir, t1_sets), (rft_dir, rft_sets)):
        check_settings(run_dir, task, run_sets, redo_verifiers)  # before anything runs or is copied
    main = vstar_run(main_dir, task, main_sets)
    # HumanEval first: it needs the main run's adapters, present when that run has just finished
    extra = humaneval(main_dir, task) if task == "mbpp" else {}
    seed_round_one(main_dir, t1_dir, task, t1_sets, ROUND_ONE + ROUND_ONE_SAMPLES + ROUND_ONE_TEST)
    t1 = vstar_run(t1_dir, task, t1_sets)
    seed_round_one(main_dir, rft_dir, task, rft_sets, ROUND_ONE + ROUND_ONE_TEST)
    rft = vstar_run(rft_dir, task, rft_sets)

    gens = main["generators"]
    last = gens[str(iterations)]
    rows = {
        "SFT": {"pass@1": gens["1"]["pass@k"]["1"]},
        **{f"STaR / V-STaR generator G^{t}": {"pass@1": gens[str(t)]["pass@k"]["1"]} for t in range(2, iterations + 1)},
        f"RFT (k = {k * iterations}, one round)": {"pass@1": rft["generators"]["2"]["pass@k"]["1"]},
        # the paper's Verification baseline: G_SFT's candidates scored by a verifier trained on G_SFT's samples,
        # at V-STaR's budget (k x T samples per problem: the rft run's verifier) and at T = 1 (k samples)
        "Verification (equal budget)": {"best_of_k": rft["generators"]["1"]["best_of_k"]["likelihood"]},
        "Verification (T = 1, half budget)": {"best_of_k": t1["generators"]["1"]["best_of_k"]["likelihood"]},
        # the paper's V-STaR [1 Iter]: all k x T samples at once from G_SFT, a generator and a verifier on them
        f"V-STaR [1 iteration] (RFT's generator, k = {k * iterations}) + DPO verifier": {
            "best_of_k": rft["generators"]["2"]["best_of_k"]["likelihood"]
        },
        f"V-STaR (T = {iterations}), DPO verifier": {"best_of_k": last["best_of_k"]["likelihood"]},
        f"V-STaR (T = {iterations}), DPO verifier, mean likelihood": {
            "best_of_k": last["best_of_k"]["mean_likelihood"]
        },
        f"V-STaR (T = {iterations}), DPO verifier, implicit reward": {
            "best_of_k": last["best_of_k"]["implicit_reward"]
        },
        f"V-STaR generator (T = {iterations}) + ORM verifier": {"best_of_k": last["best_of_k"]["orm"]},
        f"pass@k of G^{iterations} (oracle)": {"best_of_k": last["pass@k"]},
    }
    if "majority_vote" in last:
        rows[f"majority vote of G^{iterations}"] = {"best_of_k": last["majority_vote"]}
    rows.update(extra)
    settings = flat(yaml.safe_load((main_dir / "config.yaml").read_text()))
    verifiers = {key: settings.get(key) for key in ("vstar.verifier.max_pairs_per_problem", "vstar.orm.loss")}
    return {"rows": rows, "verifier_settings": verifiers, "runs": {"vstar": main, "vstar_t1": t1, "rft": rft}}


def humaneval(run_dir: Path, task_name: str) -> dict:
    """The MBPP run's final generator on HumanEval: N candidates per problem, each completing HumanEval's
    own prompt (the function's signature and docstring, zero-shot; not MBPP's prompt format),
    scored by its DPO verifier and ORM; kept beside the run (humaneval-*.jsonl) and reused. Where they
    are not written yet and the run's adapters are not here (a fresh clone), the run is resumed first:
    it retrains its generators and verifiers and reuses everything else."""
    from lmforge.methods.vstar.recipe import score_stage, test_metrics
    from lmforge.methods.vstar.stages import sample_stage, sampling_params
    from lmforge.registry import load_run_config
    from lmforge.tasks import load_task

    cfg = load_run_config(run_dir / "config.yaml", [])
    v, task = cfg.options, load_task("humaneval")
    problems = task.problems(task.eval_split, limit=v.test_problems or None)
    stages = run_dir / "stages"
    generator, gsft = stages / f"generator-{v.iterations}", stages / "generator-1"
    outputs = [run_dir / "humaneval-test.jsonl", run_dir / "humaneval-scores.jsonl"]
    if not all(path.is_file() for path in outputs):
        command = [sys.executable, "-m", "lmforge", "run", f"vstar/gemma_{task_name}", "--resume"]
        last_model = stages / "orm" / "final" / "adapter_config.json"  # the last model the run trains
        run_once([*command, "--run-dir", str(run_dir)], last_model, run_dir.with_suffix(".adapters.log"), ROOT)
    params = sampling_params(cfg, task, v.test_samples)
    candidates = sample_stage(outputs[0], task, problems, generator / "final", params, cfg)
    prompts = {p.id: p.prompt for p in problems}
    orm = stages / "orm" if (stages / "orm").is_dir() else None
    scores = score_stage(outputs[1], cfg, task, prompts, candidates, gsft, stages / "verifier", orm)
    metrics = test_metrics(task, problems, candidates, scores, v.ks)
    rows = {f"HumanEval: G^{v.iterations} pass@1": {"pass@1": metrics["pass@k"]["1"]}}
    rows.update({f"HumanEval: G^{v.iterations} + {name}": {"best_of_k": c} for name, c in metrics["best_of_k"].items()})
    return rows


def pair_counts(run_dir: Path, cap: int) -> dict:
    """The DPO verifier's preference pairs in a run, rebuilt from its D_VER (the references of its
    training problems and every samples-t.jsonl), with at most `cap` per problem and with no cap."""
    from collections import Counter

    from lmforge.methods.vstar.select import preference_pairs
    from lmforge.methods.vstar.stages import read_samples, reference_samples
    from lmforge.registry import load_run_config
    from lmforge.tasks import load_task

    cfg = load_run_config(run_dir / "config.yaml", [])
    task = load_task(cfg.data.train.partition(":")[0])
    problems = task.problems(task.train_split, limit=cfg.data.max_train_examples or None, shots=0)
    d_ver = reference_samples(problems)
    d_ver += [s for path in sorted((run_dir / "stages").glob("samples-*.jsonl")) for s in read_samples(path)]
    every = Counter(pid for pid, _, _ in preference_pairs(d_ver, 0, cfg.options.seed))
    return {
        "problems_with_pairs": len(every),
        "cap": cap,
        "pairs_with_cap": len(preference_pairs(d_ver, cap, cfg.options.seed)),
        "pairs_without_cap": sum(every.values()),
        "most_pairs_of_one_problem": max(every.values(), default=0),
    }


def print_pair_table(work: Path, cap: int) -> None:
    print(f"| task | run | problems with pairs | pairs, cap {cap} | pairs, no cap | most of one problem |")
    print("|---|---|---|---|---|---|")
    for run_dir in sorted(p for p in work.iterdir() if (p / "config.yaml").is_file()):
        c = pair_counts(run_dir, cap)
        task, run = run_dir.name.split("-", 1)
        print(f"| {task} | {run} | {c['problems_with_pairs']} | {c['pairs_with_cap']} | {c['pairs_without_cap']} "
              f"| {c['most_pairs_of_one_problem']} |")  # fmt: skip


def print_rows(task: str, rows: dict) -> None:
    ks = sorted({k for r in rows.values() for k in r.get("best_of_k", {})}, key=int)
    print(f"\n{task}: Pass@1, and Best-of-k / majority vote at k (%)")
    print("| row | pass@1 | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---|---|" + "---|" * len(ks))
    for name, r in rows.items():
        p1 = f"{100 * r['pass@1']:.1f}" if "pass@1" in r else ""
        cells = [f"{100 * r['best_of_k'][k]:.1f}" if k in r.get("best_of_k", {}) else "" for k in ks]
        print(f"| {name} | {p1} | " + " | ".join(cells) + " |")


def write_charts(folder: Path, profile: str, task: str, rows: dict) -> None:
    """The Best-of-k rows against k as SVG (the paper's Figure 4 style), for RESULTS.md: one chart of
    the task's test problems, and for MBPP one of HumanEval."""
    from lmforge.core.rundir import write_text_atomic
    from lmforge.methods.vstar.select import best_of_k_chart_svg

    for name in [task, "humaneval"]:
        prefix = "HumanEval: " if name == "humaneval" else ""
        curves = {
            row.removeprefix(prefix): {int(k): x for k, x in r["best_of_k"].items()}
            for row, r in rows.items()
            if "best_of_k" in r and row.startswith("HumanEval: ") == bool(prefix)
        }
        if curves:
            chart = best_of_k_chart_svg(curves, f"{name}: Best-of-k against k")
            write_text_atomic(folder / f"best_of_k_{profile}_{name}.svg", chart)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=["gsm8k", "mbpp"], default=["gsm8k", "mbpp"])
    parser.add_argument("--profile", choices=list(PROFILES), default="cpu")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides of every run, after the profile's")
    parser.add_argument("--work", type=Path, default=HERE / "runs", help="run folders (reused)")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument(
        "--redo-verifiers",
        action="store_true",
        help="runs made with other verifier settings only: set their verifier outputs aside and redo them",
    )
    parser.add_argument("--no-charts", action="store_true", help="leave the Best-of-k charts as they are")
    parser.add_argument("--pair-table", type=int, metavar="CAP", help="print the runs' pair counts with CAP and none")
    args = parser.parse_args()
    from records import benchmark_provenance, merge_benchmark_result

    sets = [*PROFILES[args.profile], *args.set]
    work = args.work / args.profile
    if args.pair_table is not None:
        print_pair_table(work, args.pair_table)
        return
    for task in args.tasks:
        result = task_rows(work, task, sets, args.redo_verifiers)
        print_rows(task, result["rows"])
        if not args.no_charts:
            write_charts(args.results.parent, args.profile, task, result["rows"])
        merge_benchmark_result(
            args.results, f"{args.profile}/{task}", {**benchmark_provenance(), "sets": sets, **result}
        )


if __name__ == "__main__":
    main()
