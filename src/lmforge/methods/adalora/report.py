"""AdaLoRA's part of the run report: the final rank of every adapted matrix as a heat map (matrix
types x layers, as the paper's Figures 1 and 4) and the total budget b(t) over the steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmforge.core.report import heatmap_html, line_chart_svg

ALLOCATION_FILE = "adalora.json"

# Module-name suffix -> the paper's name for the matrix (BERT-family naming). Longest suffix first,
# since "output.dense" is also the end of "attention.output.dense".
PAPER_NAMES = [
    ("attention.self.query", "W_q"),
    ("attention.self.key", "W_k"),
    ("attention.self.value", "W_v"),
    ("attention.output.dense", "W_o"),
    ("intermediate.dense", "W_f1"),
    ("output.dense", "W_f2"),
]


def split_name(module: str) -> tuple[int | None, str]:
    """'bert.encoder.layer.3.attention.self.query' -> (3, 'W_q'); other names keep their tail."""
    found = re.search(r"\.(\d+)\.(.+)$", module)
    if not found:
        return None, module
    layer, tail = int(found.group(1)), found.group(2)
    for suffix, paper in PAPER_NAMES:
        if tail == suffix:
            return layer, paper
    return layer, tail


def rank_heatmap(final_ranks: dict[str, int], init_r: int) -> str:
    cells: dict[tuple[str, int | None], int] = {}
    types: list[str] = []
    layers: list[int | None] = []
    for module, rank in final_ranks.items():
        layer, kind = split_name(module)
        cells[(kind, layer)] = rank
        types += [kind] if kind not in types else []
        layers += [layer] if layer not in layers else []
    layers.sort(key=lambda x: -1 if x is None else x)
    values = [[cells.get((kind, layer)) for layer in layers] for kind in types]
    columns = ["" if layer is None else f"layer {layer}" for layer in layers]
    return heatmap_html(types, columns, values, vmax=init_r, corner="matrix \\ layer")


def report_sections(run_dir: Path) -> list[tuple[str, str]]:
    path = Path(run_dir) / ALLOCATION_FILE
    if not path.is_file():
        return []
    info = json.loads(path.read_text())
    ranks = info["final_ranks"]
    total = sum(ranks.values())
    summary = (
        f"<p>Final budget {total} triplets over {len(ranks)} matrices (start {info['init_budget']}, "
        f"target {info['target_budget']}); each matrix started at rank {info['init_r']}.</p>"
    )
    budget = [(0, info["init_budget"]), (info["tinit"], info["init_budget"])]
    budget += [(h["step"], h["budget"]) for h in info["history"]]
    budget.append((info["total_steps"], budget[-1][1]))
    chart = line_chart_svg({"budget b(t)": budget}, "Total rank budget", "step", "triplets")
    return [
        ("AdaLoRA: final rank of each adapted matrix", summary + rank_heatmap(ranks, info["init_r"])),
        ("AdaLoRA: budget over training", chart),
    ]
