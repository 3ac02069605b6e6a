"""V-STaR (Hosseini et al., COLM 2024, "V-STaR: Training Verifiers for Self-Taught Reasoners"), Algorithm 1:

    D_GEN <- D_SFT;  D_VER <- D_SFT (reference solutions, correct)
    for t = 1..T:
        G^t <- SFT(G_base, D_GEN)                  (from the base model each time; G^1 = G_SFT)
        S   <- k samples per training problem from G^t, labelled by the task (answer or tests)
        D_GEN <- D_GEN + correct(S);  D_VER <- D_VER + S
    V <- DPO(from G_SFT, reference G_SFT, correct x incorrect pairs of D_VER)
    test: N candidates per test problem from each G^t; V scores them; Best-of-k picks the top one

Each stage is checkpointed (`stages.py`); the verifier and its scores are in `verifier.py`, the ORM
baseline (`vstar.orm.enabled`) in `orm.py`, the Best-of-k estimator, majority vote and the pair rule
in `select.py`. The STaR baseline is the same generator loop without the verifier (its Pass@1 per
iteration is reported here); RFT and SFT + verifier are composed by benchmarks/vstar from runs of
this recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.metrics import mean_pass_at_k
from lmforge.core.result import RunResult
from lmforge.core.rundir import RunDir, build_manifest, write_text_atomic
from lmforge.core.stages import finished_stage, make_stage
from lmforge.errors import UserError
from lmforge.generation.eval_gen import by_problem
from lmforge.methods.vstar.orm import orm_scores, train_orm
from lmforge.methods.vstar.report import write_vstar_report
from lmforge.methods.vstar.select import best_of_k_curve, majority_vote_curve, preference_pairs
from lmforge.methods.vstar.stages import (
    fingerprint,
    is_main_process,
    reference_samples,
    sample_stage,
    sampling_params,
    train_generator,
    training_pair,
    wait_for,
)
from lmforge.methods.vstar.verifier import PreferencePair, score_candidates, train_verifier
from lmforge.tasks import TASKS, load_task


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    v = cfg.options
    task, train_split, test_split = check_options(cfg)
    run = RunDir(run_dir)
    stages = run.path / "stages"
    if not resume and is_main_process():
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"{run.path}: run folder already exists; add --resume to continue it or pick --run-dir")
        stages.mkdir(parents=True)
        write_text_atomic(run.manifest, json.dumps(build_manifest(cfg.train.seed, {}), indent=1) + "\n")
        write_text_atomic(run.config, cfg.to_yaml())
    wait_for(run.config)

    # Zero-shot prompts throughout: the generators are trained, sampled and tested in the same format.
    # D_SFT: the training problems (the first data.max_train_examples, 0 = all) with their reference solutions
    problems = task.problems(train_split, limit=cfg.data.max_train_examples or None, shots=0)
    queries = problems[: v.query_problems or None]
    test_problems = task.problems(test_split, limit=v.test_problems or None, shots=0)
    by_id = {p.id: p for p in problems}
    d_gen = [training_pair(p, p.reference, task) for p in problems]
    d_ver = reference_samples(problems)
    held_out = f"{task.name}:{test_split}"  # the generators' evaluation loss: a signal only, never trained on

    generators = []
    for t in range(1, v.iterations + 1):
        generator = train_generator(cfg, stages, t, d_gen, held_out)
        generators.append(generator)
        if t == v.iterations and not v.sample_last_generator:
            break
        params = sampling_params(cfg, task, v.samples_per_problem)
        samples = sample_stage(stages / f"samples-{t}.jsonl", task, queries, generator / "final", params, cfg)
        d_gen += [training_pair(by_id[s.problem_id], s.completion, task) for s in samples if s.passed]
        d_ver += samples
        say(f"round {t}: {sum(s.passed for s in samples):,} of {len(samples):,} samples correct; "
            f"D_GEN {len(d_gen):,} pairs, D_VER {len(d_ver):,} solutions")  # fmt: skip

    pairs = [
        PreferencePair(pid, by_id[pid].prompt, chosen + task.answer_end, rejected + task.answer_end)
        for pid, chosen, rejected in preference_pairs(d_ver, v.verifier.max_pairs_per_problem, v.seed)
    ]
    verifier = train_verifier(cfg, stages, generators[0], pairs)
    train_prompts = {p.id: p.prompt for p in problems}
    orm = train_orm(cfg, stages, generators[0], train_prompts, d_ver, task.answer_end) if v.orm.enabled else None

    prompts = {p.id: p.prompt for p in test_problems}
    results = {}
    for t, generator in enumerate(generators, start=1):
        params = sampling_params(cfg, task, v.test_samples)
        candidates = sample_stage(stages / f"test-{t}.jsonl", task, test_problems, generator / "final", params, cfg)
        scores = score_stage(stages / f"scores-{t}.jsonl", cfg, task, prompts, candidates, generators[0], verifier, orm)
        results[t] = test_metrics(task, test_problems, candidates, scores, v.ks)

    final = summarize(cfg, results, d_gen, d_ver, pairs, len(problems), len(queries), len(test_problems))
    if is_main_process():
        run.write_json("final.json", final)
        write_vstar_report(run.path, final)
    last = results[v.iterations]
    best = (f"best_of_{max(v.ks)}", last["best_of_k"][v.verifier.test_score][str(max(v.ks))])
    return RunResult(run_dir, {"pass@1": last["pass@k"]["1"], best[0]: best[1]}, best)


def score_stage(path: Path, cfg, task, prompts, candidates, gsft: Path, verifier: Path, orm: Path | None) -> list[dict]:
    """Every candidate's verifier scores (and the ORM's P(correct)), kept in `path`."""
    v = cfg.options
    settings = {
        "candidates": fingerprint([[s.problem_id, s.index, s.completion] for s in candidates]),
        "verifier": verifier.name,
        "reference": gsft.name,
        "orm": orm.name if orm else None,
        "beta": v.verifier.beta,
    }
    if finished_stage(path.parent, path.name, settings) or not is_main_process():
        wait_for(path)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    scores = score_candidates(verifier / "final", gsft / "final", prompts, candidates, task.answer_end,
                              v.verifier.beta, cfg.train.eval_batch_size)  # fmt: skip
    if orm is not None:
        probs = orm_scores(
            orm / "final", gsft / "final", prompts, candidates, task.answer_end, cfg.train.eval_batch_size
        )
        for row, p_correct in zip(scores, probs):
            row["orm"] = p_correct
    text = "".join(json.dumps(row) + "\n" for row in scores)
    make_stage(path.parent, path.name, settings, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return scores


def test_metrics(task, problems, candidates, scores, ks) -> dict:
    """Pass@k, Best-of-k by each score, and (answer tasks) majority vote at k, over the test problems."""
    grouped = by_problem(candidates)
    score_of = {(r["problem_id"], r["index"]): r for r in scores}
    counts = [(len(grouped[p.id]), sum(s.passed for s in grouped[p.id])) for p in problems]
    out = {"pass@k": {str(k): mean_pass_at_k(counts, k) for k in ks}, "best_of_k": {}}
    for name in [n for n in ("likelihood", "mean_likelihood", "implicit_reward", "orm") if n in scores[0]]:
        per_problem = [
            ([score_of[(s.problem_id, s.index)][name] for s in grouped[p.id]], [s.passed for s in grouped[p.id]])
            for p in problems
        ]
        out["best_of_k"][name] = {str(k): x for k, x in best_of_k_curve(per_problem, ks).items()}
    if task.extract_answer is not None:
        votes = [([s.answer for s in grouped[p.id]], str(p.data["answer"])) for p in problems]
        out["majority_vote"] = {str(k): x for k, x in majority_vote_curve(votes, ks).items()}
    return out


def summarize(cfg, results, d_gen, d_ver, pairs, n_problems, n_queries, n_test) -> dict:
    v = cfg.options
    return {
        "task": cfg.data.train,
        "iterations": v.iterations,
        "samples_per_problem": v.samples_per_problem,
        "training_problems": n_problems,
        "query_problems": n_queries,
        "test_problems": n_test,
        "test_samples": v.test_samples,
        "d_gen_pairs": len(d_gen),
        "d_ver_solutions": len(d_ver),
        "d_ver_correct": sum(s.passed for s in d_ver),
        "preference_pairs": len(pairs),
        "test_score": v.verifier.test_score,
        "generators": {str(t): r for t, r in results.items()},
    }


def check_options(cfg: RunConfig):
    """(task, training split, test split); refuses what cannot work before anything is loaded."""
    v = cfg.options
    name, _, split = cfg.data.train.partition(":")
    if name not in TASKS:
        raise UserError(f"data.train: {cfg.data.train!r}: vstar needs a task with labels it can check: "
                        f"{', '.join(n for n, t in TASKS.items() if t.train_split)}")  # fmt: skip
    task = load_task(name)
    if task.train_split is None:
        raise UserError(f"data.train: task {name!r} has no training split (it is for evaluation only)")
    if split and split != task.train_split:
        raise UserError(f"data.train: {cfg.data.train!r}: train on {name}:{task.train_split}")
    if cfg.data.text_pair_column or cfg.data.subset:
        raise UserError("data.text_pair_column / data.subset: not available for vstar (it trains on a task's problems)")
    if cfg.data.eval:
        raise UserError("data.eval: not used by vstar (test problems come from vstar.test_split); leave it empty")
    test_split = v.test_split or task.eval_split
    if test_split not in task.splits or test_split == task.train_split:
        raise UserError(
            f"vstar.test_split: {test_split!r}: one of {', '.join(s for s in task.splits if s != task.train_split)}"
        )
    if not v.ks or any(k < 1 or k > v.test_samples for k in v.ks):
        raise UserError(f"vstar.ks: {v.ks}: each k must be between 1 and vstar.test_samples ({v.test_samples})")
    if cfg.train.early_stopping_patience:
        raise UserError(
            "train.early_stopping_patience: not available for vstar (the generators have no accuracy to follow)"
        )
    return task, task.train_split, test_split


def load_trained(run_dir: Path, cfg: RunConfig):
    """The final generator G^T of a finished run (the verifier is stages/verifier/)."""
    from lmforge.models.causal_lm import load_causal_lm

    return load_causal_lm(str(Path(run_dir) / "stages" / f"generator-{cfg.options.iterations}"))
