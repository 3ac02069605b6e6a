"""Self-contained HTML report for one training run.

``write_report(run_dir)`` reads the files a run leaves behind (``config.yaml``,
``manifest.json``, ``metrics.jsonl``, ``final.json`` and ``eval/*.json``) and
writes ``run_dir/report.html``: a single page with no external CSS, JS, fonts or
images, so it opens offline. Plots are inline SVG built from plain strings.
Any file except ``config.yaml`` may be missing; its section is then omitted.
"""

from __future__ import annotations

import json
import math
import os
from html import escape
from pathlib import Path
from typing import Any

import yaml

__all__ = ["confusion_matrix_html", "heatmap_html", "html_page", "line_chart_svg", "write_report"]

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_W, _H = 640, 320
_ML, _MR, _MT, _MB = 64, 150, 30, 44  # margins: left, right (legend), top, bottom

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:960px;
color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;border:1px solid #e2e2e2;padding:.75rem;overflow:auto;font-size:.85rem}
svg{display:block;margin:.5rem 0}.cm td{text-align:center;min-width:3.5rem}
"""


def _fmt(v: float) -> str:
    """Short tick label."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def line_chart_svg(
    series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str, log2_x: bool = False
) -> str:
    """Inline SVG line chart of several named (x, y) series, with axes, ticks and a legend.

    With `log2_x` the x axis is logarithmic, base 2, ticked at powers of two (k = 1, 2, 4, 8 evenly
    spaced); points with x <= 0 are left out, as are non-finite ones.
    """

    def usable(x: float, y: float) -> bool:
        return math.isfinite(x) and math.isfinite(y) and (x > 0 or not log2_x)

    # Points are kept in plotting coordinates: log2(x) on a log axis.
    clean = {
        name: [(math.log2(x) if log2_x else x, y) for x, y in ((float(a), float(b)) for a, b in pts) if usable(x, y)]
        for name, pts in series.items()
    }
    pts_all = [p for pts in clean.values() for p in pts]
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
            f'font-family="sans-serif" font-size="11" role="img">'
        ),
        f'<text x="{_W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    if not pts_all:
        out.append(f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(out)
    xs, ys = [p[0] for p in pts_all], [p[1] for p in pts_all]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    if y0 == y1:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    pw, ph = _W - _ML - _MR, _H - _MT - _MB

    def sx(x: float) -> float:
        return _ML + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return _MT + ph - (y - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    # Log axis: a tick at each whole power of two in range (at most about 8), else at the two ends.
    step = max(1, math.ceil((x1 - x0) / 8))
    x_ticks = (list(range(math.ceil(x0), math.floor(x1) + 1, step)) or [x0, x1]) if log2_x else _ticks(x0, x1)
    for t in x_ticks:
        X = sx(t)
        out.append(f'<line x1="{X:.1f}" y1="{_MT + ph}" x2="{X:.1f}" y2="{_MT + ph + 4}" stroke="#999"/>')
        out.append(f'<text x="{X:.1f}" y="{_MT + ph + 16}" text-anchor="middle">{_fmt(2.0**t if log2_x else t)}</text>')
    for t in _ticks(y0, y1):
        Y = sy(t)
        out.append(f'<line x1="{_ML}" y1="{Y:.1f}" x2="{_ML + pw}" y2="{Y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_ML - 6}" y="{Y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{_ML + pw / 2}" y="{_H - 6}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="14" y="{_MT + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_MT + ph / 2})">{escape(y_label)}</text>'
    )
    for i, (name, pts) in enumerate(clean.items()):
        color = _COLORS[i % len(_COLORS)]
        pts = sorted(pts)
        if len(pts) > 1:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}"/>')
        if len(pts) <= 30:
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
        ly = _MT + 10 + i * 16
        out.append(f'<rect x="{_W - _MR + 12}" y="{ly - 8}" width="12" height="3" fill="{color}"/>')
        out.append(f'<text x="{_W - _MR + 30}" y="{ly - 3}">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def heatmap_html(
    row_labels: list[str], col_labels: list[str], values: list[list[float | None]], vmax: float, corner: str = ""
) -> str:
    """HTML table heat map: each cell shows its value, shaded by value / vmax (None: an empty cell)."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in col_labels)
    rows = []
    for name, row in zip(row_labels, values):
        cells = []
        for v in row:
            if v is None:
                cells.append("<td></td>")
                continue
            share = max(0.0, min(1.0, v / vmax)) if vmax > 0 else 0.0
            fg = "#fff" if share > 0.6 else "#222"
            cells.append(f'<td style="background:rgba(214,39,40,{share:.3f});color:{fg}">{v:g}</td>')
        rows.append(f"<tr><th>{escape(str(name))}</th>{''.join(cells)}</tr>")
    return f'<table class="cm"><tr><th>{escape(corner)}</th>{head}</tr>{"".join(rows)}</table>'


def confusion_matrix_html(labels: list[str], matrix: list[list[int]]) -> str:
    """HTML table: rows are true labels, columns predicted; cells shaded by row-normalised share."""
    head = "".join(f"<th>{escape(str(lab))}</th>" for lab in labels)
    rows = []
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        name = escape(str(labels[i])) if i < len(labels) else str(i)
        cells = []
        for v in row:
            share = v / total
            fg = "#fff" if share > 0.6 else "#222"
            cells.append(
                f'<td style="background:rgba(31,119,180,{share:.3f});color:{fg}" title="{share:.1%}">{int(v)}</td>'
            )
        rows.append(f"<tr><th>{name}</th>{''.join(cells)}</tr>")
    return '<table class="cm"><tr><th>true \\ predicted</th>' + head + "</tr>" + "".join(rows) + "</table>"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(records: list[dict[str, Any]], split: str, key: str) -> list[tuple[float, float]]:
    return [
        (r["step"], r[key]) for r in records if r.get("split") == split and _num(r.get("step")) and _num(r.get(key))
    ]


def _charts(records: list[dict[str, Any]]) -> str:
    parts = []
    loss = {"train loss": _series(records, "train", "loss"), "eval loss": _series(records, "eval", "loss")}
    loss = {k: v for k, v in loss.items() if v}
    if loss:
        parts.append(line_chart_svg(loss, "Loss", "step", "loss"))
    keys: list[str] = []
    for r in records:
        if r.get("split") == "eval":
            keys += [k for k, v in r.items() if k not in ("step", "epoch", "loss") and _num(v) and k not in keys]
    evals = {k: s for k in keys if (s := _series(records, "eval", k))}
    if evals:
        parts.append(line_chart_svg(evals, "Evaluation metrics", "step", "value"))
    lr = _series(records, "train", "lr")
    if lr:
        parts.append(line_chart_svg({"lr": lr}, "Learning rate", "step", "lr"))
    return "".join(parts)


def _kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _manifest_html(manifest: dict[str, Any]) -> str:
    rows = []
    for k, v in manifest.items():
        if k == "packages" and isinstance(v, dict):
            inner = _kv_table([(str(n), escape(str(ver))) for n, ver in sorted(v.items())])
            rows.append((k, f"<details><summary>{len(v)} packages</summary>{inner}</details>"))
        elif isinstance(v, (dict, list)):
            rows.append((str(k), f"<code>{escape(json.dumps(v, sort_keys=True))}</code>"))
        else:
            rows.append((str(k), escape(str(v))))
    return _kv_table(rows)


def _eval_html(result: dict[str, Any]) -> str:
    parts = []
    info = [(k, escape(str(result[k]))) for k in ("eval_data", "n_examples") if k in result]
    if info:
        parts.append(_kv_table(info))
    metrics = result.get("metrics")
    if isinstance(metrics, dict) and metrics:
        body = "".join(
            f'<tr><td>{escape(str(k))}</td><td class="num">{f"{v:.4f}" if _num(v) else escape(str(v))}</td></tr>'
            for k, v in metrics.items()
        )
        parts.append(f"<table><tr><th>metric</th><th>value</th></tr>{body}</table>")
    labels, confusion = result.get("labels"), result.get("confusion")
    if isinstance(confusion, list) and confusion:
        if not isinstance(labels, list):
            labels = [str(i) for i in range(len(confusion))]
        parts.append("<h3>Confusion matrix</h3>" + confusion_matrix_html([str(x) for x in labels], confusion))
    return "".join(parts)


def html_page(title: str, body: str, style: str = "") -> str:
    """A whole self-contained HTML page: the reports' style (plus `style`), `title`, the `body` fragment."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}{style}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(run_dir: Path, sections: list[tuple[str, str]] | None = None) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run's files and return its path."""
    run_dir = Path(run_dir)
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError:
        config = None
    config = config if isinstance(config, dict) else {}
    method = config.get("method")
    if isinstance(method, dict):
        method = method.get("name")
    model = config.get("model")
    if isinstance(model, dict):
        model = model.get("name") or model.get("name_or_path") or model.get("path")
    title = f"lmforge run: {method or 'unknown method'} / {model or 'unknown model'}"

    body = [f"<h1>{escape(title)}</h1>", f"<p>Run directory: <code>{escape(str(run_dir))}</code></p>"]
    manifest = _read_json(run_dir / "manifest.json")
    if isinstance(manifest, dict) and manifest:
        body.append("<h2>Manifest</h2>" + _manifest_html(manifest))
    charts = _charts(_read_metrics(run_dir / "metrics.jsonl"))
    if charts:
        body.append("<h2>Training curves</h2>" + charts)
    final = _read_json(run_dir / "final.json")
    if isinstance(final, dict):
        body.append("<h2>Final evaluation</h2>" + _eval_html(final))
    eval_dir = run_dir / "eval"
    others = sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []
    other_html = [
        f"<h3>{escape(p.stem)}</h3>" + _eval_html(res) for p in others if isinstance(res := _read_json(p), dict)
    ]
    if other_html:
        body.append("<h2>Other evaluations</h2>" + "".join(other_html))
    body.append(f"<h2>Config</h2><pre>{escape(config_text)}</pre>")
    for sec_title, fragment in sections or []:
        body.append(f"<h2>{escape(sec_title)}</h2>{fragment}")

    page = html_page(title, "\n".join(body))
    out = run_dir / "report.html"
    tmp = run_dir / "report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
