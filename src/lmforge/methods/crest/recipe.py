"""CReST and CReST+ (Wei, Sohn, Mellina, Yuille, Yang, CVPR 2021, "CReST: A Class-Rebalancing Self-Training
Framework for Imbalanced Semi-Supervised Learning", Algorithm 1 and sections 3.2-3.3):

    L_1 <- L
    for g = 1..G:
        model_g <- FixMatch(pretrained model, L_g, U)       (fresh model and optimizer; CReST+: aligned
                                                             pseudo-labels at temperature t_g)
        predict U with model_g
        L_{g+1} <- L + for each class l, the most confident mu_l of the samples predicted as l
                   (mu_l = (N_{L+1-l} / N_1) ** alpha: the rarer the class, the more it keeps)
    the model of generation G is the result

Each generation is a child run in stages/generation-<g>/ (a whole training run: config, checkpoints,
metrics, final/, report), each pseudo-labeling a stage (stages/predictions-<g>.json): `--resume` after
`kill -9` anywhere goes on at the first unfinished piece. Under `accelerate launch` every process trains
each generation; the main process pseudo-labels and writes the parent's files, the others read them.
The pieces: rebalance.py (selection and alignment), fixmatch.py (the unlabeled loss), augment.py (the
views), generation.py (the loop), data.py (L, U and the long tail), report.py (final.json's generations and
report.html).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmforge.config import RunConfig
from lmforge.core.console import say
from lmforge.core.processes import is_main_process
from lmforge.core.result import RunResult
from lmforge.core.rundir import open_parent_run, publish_folder
from lmforge.core.stages import FINISHED, shared_child_run
from lmforge.core.training_run import scalar_metrics
from lmforge.methods.crest.data import generation_labeled_set, load_crest_data
from lmforge.methods.crest.generation import predictions_stage, train_generation
from lmforge.methods.crest.rebalance import select_pseudo_labels, selection_rates
from lmforge.methods.crest.report import generation_summary, write_crest_report
from lmforge.models.classifier import load_saved_classifier


def run(cfg: RunConfig, run_dir: Path, resume: bool) -> RunResult:
    c = cfg.options
    data = load_crest_data(cfg)  # every input checked before the run folder is written
    rates = selection_rates(data.labeled_counts, c.alpha)
    run = open_parent_run(run_dir, cfg.to_yaml(), cfg.train.seed, data.manifest(), resume)
    stages = run.path / "stages"

    labeled, generations = data.task.train, []
    for g in range(c.generations):
        child = shared_child_run(stages, f"generation-{g + 1}")
        if child.state == FINISHED:
            say(f"generation {g + 1}: finished earlier ({child.folder})")
        else:
            say(f"generation {g + 1} of {c.generations}: FixMatch on {len(labeled):,} labeled and "
                f"{len(data.unlabeled):,} unlabeled examples")  # fmt: skip
            train_generation(cfg, child.folder, child.resume, data, labeled, g)
        final = json.loads((child.folder / "final.json").read_text())
        record = {"generation": g + 1, "labeled": len(labeled), "final": final}
        if g + 1 < c.generations:  # the last model's pseudo-labels would feed no generation
            predictions = predictions_stage(stages, g, child.folder / "final", data, cfg)
            predicted, confidence = np.asarray(predictions["predicted"]), np.asarray(predictions["confidence"])
            chosen = select_pseudo_labels(predicted, confidence, rates)
            record["predictions"], record["chosen"] = predictions, chosen
            labeled = generation_labeled_set(data, chosen)
            say(f"generation {g + 1}: {len(chosen):,} pseudo-labeled samples join the labeled set "
                f"({predictions['examples_per_second']:,.0f} unlabeled examples/s)")  # fmt: skip
        generations.append(record)

    last = stages / f"generation-{c.generations}"
    summary = generation_summary(data, rates, generations)
    metrics = scalar_metrics(summary["generations"][-1]["metrics"])
    if is_main_process():  # under `accelerate launch` every process ran the generations; one writes
        publish_folder(last / "final", run.final)
        run.write_json("final.json", {"metrics": metrics, **summary})  # written last: it marks a finished run
        write_crest_report(run.path, json.loads((run.path / "final.json").read_text()))
    return RunResult(run_dir, metrics, ("balanced_accuracy", metrics["balanced_accuracy"]))


def load_trained(run_dir: Path, cfg: RunConfig):
    return load_saved_classifier(Path(run_dir) / "final")
