"""The continual benchmark's summaries: mean and spread over runs (seeds and task orders), the markdown
tables bench.py prints, and its bar charts (inline SVG, no plotting library).

The stream metrics are those of final.json's "stream" (methods/continual/metrics.py: average accuracy and
backward / forward transfer of Lopez-Paz and Ranzato 2017, forgetting of Chaudhry et al. 2018).
"""

from __future__ import annotations

import json
import statistics
from html import escape
from pathlib import Path

STREAM_METRICS = ("average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "learning_accuracy")
COST_METRICS = ("trainable_parameters", "replay_buffer", "train_seconds")
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]


def mean_spread(values: list[float | None]) -> dict | None:
    """Mean, sample standard deviation (None for one run), min, max and the values; None when no run has it
    (joint training has no transfer or forgetting: it has no matrix)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def stream_record(final: dict, run_dir: Path) -> dict:
    """One stream's row: its metrics, the trainable parameters of its child runs (the largest: every task of
    a strategy trains the same parameter count), the replay buffer's size and the training seconds."""
    children = [json.loads(p.read_text()) for p in sorted((run_dir / "stages").glob("*/final.json"))]
    stream = final["stream"]
    return {
        **{k: stream.get(k) for k in STREAM_METRICS},
        "trainable_parameters": max(c["trainable_parameters"] for c in children),
        "replay_buffer": final["replay_buffer"],
        "train_seconds": final["train_seconds"],
    }


def summarize(records: list[dict]) -> dict:
    """{metric: mean_spread over the records} for the stream and cost metrics."""
    return {k: mean_spread([r.get(k) for r in records]) for k in (*STREAM_METRICS, *COST_METRICS)}


def points(stat: dict | None) -> str:
    """A share as points: '71.3 ± 2.1' (mean ± std over runs)."""
    if stat is None:
        return "-"
    std = f" ± {100 * stat['std']:.1f}" if stat["std"] is not None else ""
    return f"{100 * stat['mean']:.1f}{std}"


def plain(stat: dict | None, digits: int = 0) -> str:
    if stat is None:
        return "-"
    std = f" ± {stat['std']:,.{digits}f}" if stat["std"] is not None and stat["std"] > 0 else ""
    return f"{stat['mean']:,.{digits}f}{std}"


def stream_table(title: str, summaries: dict[str, dict], tuned: dict[str, str]) -> str:
    """The markdown table of one stream kind: a row per strategy."""
    lines = [
        f"\n{title} (accuracies in points; mean ± std over runs)",
        "| strategy | tuned | average accuracy | BWT | FWT | forgetting | trainable params | replay buffer "
        "| train s | runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for strategy, s in summaries.items():
        runs = s["average_accuracy"]["n"] if s["average_accuracy"] else 0
        cells = [points(s[k]) for k in ("average_accuracy", "backward_transfer", "forward_transfer", "forgetting")]
        cells += [plain(s["trainable_parameters"]), plain(s["replay_buffer"]), plain(s["train_seconds"])]
        lines.append(f"| {strategy} | {tuned.get(strategy, '')} | {' | '.join(cells)} | {runs} |")
    return "\n".join(lines)


def bar_chart_svg(groups: list[str], series: dict[str, list[dict | None]], title: str, y_label: str) -> str:
    """Grouped bars: one group per name in `groups`, one bar per series (its mean), a whisker of ± one std
    where there is one; values may be negative (the zero line is drawn)."""
    from lmforge.core.report import nice_ticks

    width, left, right, top, plot_h = 640, 64, 16, 34, 220
    legend_y = top + plot_h + 46
    height = legend_y + 18
    spans = [(s["mean"] - (s["std"] or 0), s["mean"] + (s["std"] or 0)) for v in series.values() for s in v if s]
    lo = min([0.0, *(a for a, _ in spans)])
    hi = max([0.0, *(b for _, b in spans)])
    ticks = nice_ticks(lo, hi if hi > lo else lo + 1, 7)
    y0, y1 = ticks[0], ticks[-1]
    plot_w = width - left - right

    def y(v: float) -> float:
        return top + plot_h - (v - y0) / (y1 - y0) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} '
        f'{height}" font-family="sans-serif" font-size="11" role="img">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    step = max(abs(ticks[1] - ticks[0]), 1e-12) if len(ticks) > 1 else 1.0
    decimals = max(0, -int(f"{step:e}".split("e")[1]))
    for t in ticks:
        out.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + plot_w}" y2="{y(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.{decimals}f}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    out.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + plot_w}" y2="{y(0):.1f}" stroke="#444"/>')
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for g, name in enumerate(groups):
        x_start = left + g * group_w + group_w * 0.1
        for k, stats in enumerate(series.values()):
            s = stats[g]
            if s is None:
                continue
            x, color = x_start + k * bar_w, COLORS[k % len(COLORS)]
            y_top, y_base = min(y(s["mean"]), y(0)), max(y(s["mean"]), y(0))
            out.append(f'<rect x="{x + 1:.1f}" y="{y_top:.1f}" width="{bar_w - 2:.1f}" '
                       f'height="{max(y_base - y_top, 0.5):.1f}" fill="{color}"/>')  # fmt: skip
            if s["std"]:
                cx = x + bar_w / 2
                a, b = y(s["mean"] - s["std"]), y(s["mean"] + s["std"])
                out.append(f'<line x1="{cx:.1f}" y1="{a:.1f}" x2="{cx:.1f}" y2="{b:.1f}" stroke="#222"/>')
        out.append(f'<text x="{left + (g + 0.5) * group_w:.1f}" y="{top + plot_h + 16}" '
                   f'text-anchor="middle">{escape(name)}</text>')  # fmt: skip
    out.append(f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + plot_h / 2})">{escape(y_label)}</text>')  # fmt: skip
    x = float(left)
    for k, label in enumerate(series):
        out.append(f'<rect x="{x:.0f}" y="{legend_y - 8}" width="12" height="10" fill="{COLORS[k % len(COLORS)]}"/>')
        out.append(f'<text x="{x + 16:.0f}" y="{legend_y}">{escape(label)}</text>')
        x += 30 + 7 * len(label)
    out.append("</svg>")
    return "".join(out)


def write_chart(folder: Path, name: str, svg: str) -> Path:
    """`name`.svg in `folder`, and beside it (in work/) an HTML page holding it, to look at in a browser."""
    from lmforge.core.report import html_page

    path = folder / f"{name}.svg"
    path.write_text(svg)
    pages = folder / "work" if (folder / "work").is_dir() else folder
    (pages / f"{name}.html").write_text(html_page(name, svg))
    return path


def quality_charts(folder: Path, result: dict, profile: str) -> list[Path]:
    """Average accuracy and forgetting per strategy (mean ± std over runs), one chart per stream kind."""
    written = []
    for kind, title in (("task_incremental", "task-incremental, 4 tasks"), ("class_incremental", "class-incremental, "
                                                                            "AG News 2+2 classes")):  # fmt: skip
        table = result[kind]["summary"]
        names = list(table)
        series = {
            "average accuracy": [scale(table[s]["average_accuracy"]) for s in names],
            "forgetting": [scale(table[s]["forgetting"]) for s in names],
        }
        svg = bar_chart_svg(names, series, f"{title}: mean ± std over runs ({profile})", "points")
        written.append(write_chart(folder, f"quality-{kind.replace('_', '-')}-{profile}", svg))
    return written


def lm_chart(folder: Path, result: dict, profile: str) -> Path:
    """Each task's held-out loss through the stream (before training, after GSM8K, after MBPP), a line per
    strategy and task (mean over seeds); the y axis fits the losses, so the rise shows."""
    from lmforge.core.report import line_chart_svg

    stages = {"gsm8k": ("gsm8k_before", "gsm8k_after_gsm8k", "gsm8k_after_mbpp"),
              "mbpp": ("mbpp_before", "mbpp_after_gsm8k", "mbpp_after_mbpp")}  # fmt: skip
    series = {}
    for strategy, row in result["strategies"].items():
        for task, keys in stages.items():
            series[f"{strategy}: {task.upper()} loss"] = [(x, row[k]["mean"]) for x, k in enumerate(keys)]
    x_label = "tasks trained (0: the base model, 1: GSM8K, 2: then MBPP)"
    svg = line_chart_svg(series, f"Held-out loss through the stream, mean over seeds ({profile})", x_label,
                         "loss (nats per token)")  # fmt: skip
    return write_chart(folder, f"lm-{profile}", svg)


def scale(stat: dict | None, factor: float = 100.0) -> dict | None:
    """A mean_spread in points (x100)."""
    if stat is None:
        return None
    return {**stat, "mean": stat["mean"] * factor, "std": stat["std"] * factor if stat["std"] is not None else None}
