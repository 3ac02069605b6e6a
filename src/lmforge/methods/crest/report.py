"""final.json and report.html of a CReST run: each generation's held-out metrics (the paper's balanced
accuracy, i.e. the mean per-class recall, and the recall of the minority classes), the pseudo-labels each
generation added per class, and, where U's labels are known (a long tail drawn from labeled data), how
many of them were right.

minority_recall is the mean recall of the rarer half of the classes (floor(L / 2), at least one) by
labeled count; tail_recall the recall of the rarest class.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np

from lmforge.core.metrics import per_class_recall
from lmforge.core.report import heatmap_html, line_chart_svg, write_report
from lmforge.methods.crest.data import CrestData
from lmforge.methods.crest.rebalance import class_ranks


def minority_classes(labeled_counts: list[int]) -> list[int]:
    """Class indices of the rarer half by labeled count, rarest first (ties: higher class index first)."""
    ranks = class_ranks(labeled_counts)
    by_rarity = sorted(range(len(labeled_counts)), key=lambda c: -ranks[c])
    return by_rarity[: max(1, len(labeled_counts) // 2)]


def recall_metrics(confusion: list[list[int]], labeled_counts: list[int]) -> dict:
    recalls = per_class_recall(np.asarray(confusion))
    minority = [recalls[c] for c in minority_classes(labeled_counts) if recalls[c] is not None]
    tail = recalls[minority_classes(labeled_counts)[0]]
    return {
        "minority_recall": float(np.mean(minority)) if minority else None,
        "tail_recall": tail,
        "per_class_recall": recalls,
    }


def generation_summary(data: CrestData, rates: np.ndarray, generations: list[dict]) -> dict:
    """final.json of the CReST run (its "metrics" are the last generation's, added by the recipe)."""
    labels, counts = data.task.labels, data.labeled_counts
    rows = []
    for record in generations:
        final = record["final"]
        row = {
            "generation": record["generation"],
            "labeled": record["labeled"],
            "steps": final["steps"],
            "train_seconds": final["train_seconds"],
            "metrics": {**final["metrics"], **recall_metrics(final["confusion"], counts)},
        }
        if "chosen" in record:
            predicted = record["predictions"]["predicted"]
            added = {label: 0 for label in labels}
            right = {label: 0 for label in labels}
            for i, c in record["chosen"]:
                added[labels[c]] += 1
                if data.hidden_labels is not None and data.hidden_labels[i] == labels[c]:
                    right[labels[c]] += 1
            row["pseudo_labels"] = {
                "predicted": {label: sum(1 for p in predicted if p == c) for c, label in enumerate(labels)},
                "added": added,
                "precision": None if data.hidden_labels is None
                else {label: right[label] / added[label] if added[label] else None for label in labels},
                "examples_per_second": record["predictions"]["examples_per_second"],
            }  # fmt: skip
        rows.append(row)
    last = generations[-1]["final"]
    order = sorted(range(len(labels)), key=lambda c: class_ranks(counts)[c])
    return {
        "labels": labels,
        "confusion": last["confusion"],
        "eval_data": last["eval_data"],
        "n_examples": last["n_examples"],
        "class_order": [labels[c] for c in order],
        "labeled_counts": dict(zip(labels, counts)),
        "unlabeled": len(data.unlabeled),
        "selection_rates": {label: round(float(r), 6) for label, r in zip(labels, rates)},
        "minority_classes": [labels[c] for c in minority_classes(counts)],
        "generations": rows,
        "steps": sum(r["steps"] for r in rows),
        "train_seconds": round(sum(r["train_seconds"] for r in rows), 3),
        "trainable_parameters": last["trainable_parameters"],
        "total_parameters": last["total_parameters"],
    }


def _fmt(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def write_crest_report(run_dir: Path, final: dict) -> Path:
    rows, labels = final["generations"], final["labels"]
    order = [labels.index(name) for name in final["class_order"]]
    curves = {
        name: [(r["generation"], r["metrics"][key]) for r in rows if r["metrics"].get(key) is not None]
        for name, key in [("balanced accuracy", "balanced_accuracy"), ("minority recall", "minority_recall"),
                          ("accuracy", "accuracy"), ("rarest class recall", "tail_recall")]
    }  # fmt: skip
    chart = line_chart_svg(curves, "Held-out metrics by generation", "generation", "share", y_from_zero=True)
    recall = heatmap_html(
        [f"generation {r['generation']}" for r in rows],
        [f"{labels[c]} ({final['labeled_counts'][labels[c]]})" for c in order],
        [[round(100 * x, 1) if (x := r["metrics"]["per_class_recall"][c]) is not None else None for c in order]
         for r in rows],
        100.0,
        "recall % (labeled count)",
    )  # fmt: skip
    sections = [
        ("Generations", chart + "<p>Classes from head to tail: "
         + escape(", ".join(f"{name} ({final['labeled_counts'][name]} labeled, mu {final['selection_rates'][name]:.3f})"
                            for name in final["class_order"])) + "; minority classes: "
         + escape(", ".join(final["minority_classes"])) + ".</p>"),
        ("Per-class recall on the held-out set", recall),
    ]  # fmt: skip
    pseudo = [r for r in rows if "pseudo_labels" in r]
    if pseudo:
        head = "".join(f"<th>{escape(labels[c])}</th>" for c in order)
        body = ""
        for r in pseudo:
            p = r["pseudo_labels"]
            cells = "".join(
                f"<td>{p['added'][labels[c]]} of {p['predicted'][labels[c]]}"
                + (f" ({_fmt(p['precision'][labels[c]])}% right)" if p["precision"] is not None
                   and p["precision"][labels[c]] is not None else "") + "</td>"
                for c in order
            )  # fmt: skip
            body += f"<tr><th>after generation {r['generation']}</th>{cells}</tr>"
        sections.append(("Pseudo-labels added to the next generation's labeled set (added of predicted)",
                         f'<table class="cm"><tr><th></th>{head}</tr>{body}</table>'))  # fmt: skip
    return write_report(run_dir, sections)
