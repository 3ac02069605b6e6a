"""TinyBERT's part of the run report: each distillation loss over training (embedding, attention and
hidden states per student layer, prediction), and the teacher-student agreement on the evaluation data."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.core.report import line_chart_svg

SUMMARY_FILE = "tinybert.json"


def loss_series(records: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Train-record losses grouped by kind: {"attention": {"attention/1": [(step, value), ...]}, ...}."""
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in records:
        if r.get("split") != "train":
            continue
        for key, value in r.items():
            kind = key.split("/")[0]
            if kind in ("embedding", "attention", "hidden", "prediction") and isinstance(value, (int, float)):
                groups.setdefault(kind, {}).setdefault(key, []).append((r["step"], value))
    return groups


def report_sections(run_dir: Path) -> list[tuple[str, str]]:
    run_dir = Path(run_dir)
    sections = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        groups = loss_series(records)
        charts = "".join(
            line_chart_svg(series, f"{kind} loss", "step", "loss") for kind, series in sorted(groups.items())
        )
        if charts:
            sections.append(("TinyBERT: distillation losses per layer", charts))
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        rows = [
            ("teacher accuracy", f"{s['teacher_accuracy']:.4f}"),
            ("student accuracy", f"{s['student_accuracy']:.4f}"),
            ("teacher-student agreement", f"{s['agreement']:.4f} of {s['n_examples']} examples"),
            ("parameters (teacher / student)", f"{s['teacher_parameters']:,} / {s['student_parameters']:,}"),
            ("layer map g(m)", ", ".join(map(str, s["layer_map"]))),
        ]
        body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        sections.append(("TinyBERT: teacher and student", f"<table>{body}</table>"))
    return sections
