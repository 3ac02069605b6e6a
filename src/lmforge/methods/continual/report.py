"""report.html of a stream: the accuracy matrix as a heat map (row: after training on a task; column: the
task scored), each task's accuracy over the stream as curves, and the stream's metrics."""

from __future__ import annotations

from html import escape
from pathlib import Path

from lmforge.core.report import heatmap_html, line_chart_svg, write_report
from lmforge.methods.continual.metrics import matrix_html


def _points(x) -> str:
    return "not defined (one task)" if x is None else f"{100 * x:+.1f} points"


def write_stream_report(run_dir: Path, final: dict) -> Path:
    names, matrix = final["tasks"], final["matrix"]
    if matrix is None:  # joint training: one model after every task
        row = [final["scores"][-1][name]["accuracy"] for name in names]
        table = heatmap_html(["before training", "after joint training"], names,
                             [[round(100 * x, 1) for x in final["before"]], [round(100 * x, 1) for x in row]],
                             100.0, "score %")  # fmt: skip
        accuracy = 100 * final["stream"]["average_accuracy"]
        summary = (f"<p>joint training on every task at once ({escape(final['setting'])}-incremental): average "
                   f"accuracy {accuracy:.1f}%, the upper bound of the stream.</p>")  # fmt: skip
        return write_report(run_dir, [("Stream", summary), ("Scores", table)])
    curves = {
        name: [(0, final["before"][j])] + [(i + 1, row[j]) for i, row in enumerate(matrix)]
        for j, name in enumerate(names)
    }
    chart = line_chart_svg(curves, "Accuracy of each task over the stream", "tasks trained (0 = before)",
                           "accuracy", y_from_zero=True)  # fmt: skip
    m = final["stream"]
    summary = (
        f"<p>{escape(final['strategy'])}, {escape(final['setting'])}-incremental, {len(names)} tasks: "
        f"average accuracy {100 * m['average_accuracy']:.1f}%, backward transfer {_points(m['backward_transfer'])}, "
        f"forward transfer {_points(m['forward_transfer'])}, forgetting {_points(m['forgetting'])} "
        "(Lopez-Paz and Ranzato 2017; Chaudhry et al. 2018).</p>"
    )
    sections = [
        ("Stream", summary),
        ("Accuracy matrix", matrix_html(matrix, names, final["before"])),
        ("Each task over the stream", chart),
    ]
    return write_report(run_dir, sections)


def write_loss_report(run_dir: Path, final: dict) -> Path:
    """report.html of a causal-LM stream: the held-out loss matrix (lower is better) and each task's loss
    over the stream."""
    names, matrix = final["tasks"], final["loss_matrix"]
    rows = [final["before"], *matrix]
    table = heatmap_html(["before training", *[f"after {n}" for n in names]], names,
                         [[round(x, 3) for x in row] for row in rows], max(max(row) for row in rows),
                         "held-out loss (row: after training on)")  # fmt: skip
    curves = {name: [(i, row[j]) for i, row in enumerate(rows)] for j, name in enumerate(names)}
    chart = line_chart_svg(curves, "Held-out loss of each task over the stream", "tasks trained (0 = before)",
                           "loss per completion token")  # fmt: skip
    m = final["metrics"]
    summary = (
        f"<p>{escape(final['strategy'])}, {len(names)} tasks: mean final held-out loss {m['average_final_loss']:.3f}"
    )
    if "forgetting" in m:
        summary += f"; loss rise of the earlier tasks {m['loss_rise']:+.3f}, forgetting {m['forgetting']:+.3f}"
    sections = [("Stream", summary + ".</p>"), ("Held-out loss matrix", table), ("Each task over the stream", chart)]
    return write_report(run_dir, sections)
