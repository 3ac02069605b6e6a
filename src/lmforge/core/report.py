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

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_W, _PH = 640, 240  # chart width; plot height
_ML, _MR, _MT = 72, 24, 30  # margins: left (tick labels), right, top (title)
_CHAR_W = 7.0  # generous width of one 11 px sans-serif character, to lay out the legend without clipping
_LEGEND_ROW = 16

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:960px;
color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;border:1px solid #e2e2e2;padding:.75rem;overflow:auto;font-size:.85rem}
svg{display:block;margin:.5rem 0}.cm td{text-align:center;min-width:3.5rem}
.headline{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.headline div{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;background:#fafafa}
.headline b{display:block;font-size:1.4rem}.headline span{color:#555;font-size:.85rem}
"""


def nice_ticks(lo: float, hi: float, max_ticks: int = 7, integer: bool = False) -> list[float]:
    """Round tick values that cover [lo, hi]: evenly spaced by 1, 2 or 5 times a power of ten, the first
    at or below `lo`, the last at or above `hi`, at most `max_ticks` of them (the smallest such step).
    With `integer` the step is a whole number (step counts, layers, k), so no tick falls between two."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got {lo}, {hi}")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:
        pad = 1.0 if integer or lo == 0 else abs(lo) * 0.1
        lo, hi = lo - pad, hi + pad
    exponent = math.floor(math.log10((hi - lo) / max_ticks))
    while True:
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**exponent
            if integer and step < 1:
                continue
            first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
            if last - first + 1 <= max_ticks:
                digits = max(0, -exponent) + 1  # rounding the float error away, keeping the step's digits
                return [round(k * step, digits) for k in range(first, last + 1)]
        exponent += 1


def _tick_labels(ticks: list[float]) -> tuple[list[str], str]:
    """Labels of round ticks, with as many decimals as the step needs, and the axis-label suffix: very
    small or very large values are shown as multiples of a power of ten named in the axis label."""
    top = max(abs(t) for t in ticks)
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else top or 1.0
    scale, suffix = 1.0, ""
    if top and (top < 1e-3 or top >= 1e5):
        power = math.floor(math.log10(top))
        scale, suffix = 10.0**power, f" (\u00d71e{power})"
    decimals = max(0, -math.floor(math.log10(step / scale) + 1e-9))
    return [f"{t / scale:,.{decimals}f}" if t else "0" for t in ticks], suffix


def _legend_rows(names: list[str], width: float) -> list[list[tuple[int, str]]]:
    """Legend entries (series index, text) laid out in rows that fit `width`; a name longer than a row
    is wrapped at spaces onto rows of its own (never cut)."""
    swatch = 22
    rows: list[list[tuple[int, str]]] = [[]]
    used = 0.0
    for i, name in enumerate(names):
        need = swatch + len(name) * _CHAR_W + 14
        if need > width:  # wrap this one name over several rows
            chunks, line = [], ""
            for word in name.split(" "):
                if line and swatch + len(line + " " + word) * _CHAR_W > width:
                    chunks.append(line)
                    line = word
                else:
                    line = f"{line} {word}" if line else word
            chunks.append(line)
            rows = [r for r in rows if r] + [[(i, chunks[0])]] + [[(-1, c)] for c in chunks[1:]] + [[]]
            used = 0.0
            continue
        if used + need > width and rows[-1]:
            rows.append([])
            used = 0.0
        rows[-1].append((i, name))
        used += need
    return [r for r in rows if r]


def line_chart_svg(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    log2_x: bool = False,
    y_from_zero: bool = False,
    marks: list[tuple[float, str]] | None = None,
) -> str:
    """Inline SVG line chart of several named (x, y) series, with round ticks and a legend below the plot.

    Ticks fall on round values (steps of 1, 2 or 5 times a power of ten); the y axis ends on ticks, the
    x axis at its last point. An axis whose values are all whole numbers (steps, layers, k) gets
    whole-number ticks only. The x axis starts at 0 when no x is negative. With `y_from_zero` (rates,
    accuracies, learning rates) the y axis starts at 0, so a small difference looks small. `marks` are
    (x, label) pairs drawn as dashed vertical lines (the end of the warmup). With `log2_x` the x axis
    is logarithmic, base 2, ticked at powers of two (k = 1, 2, 4, 8 evenly spaced); points with x <= 0
    are left out, as are non-finite ones.
    """

    def usable(x: float, y: float) -> bool:
        return math.isfinite(x) and math.isfinite(y) and (x > 0 or not log2_x)

    # Points are kept in plotting coordinates: log2(x) on a log axis.
    clean = {
        name: [(math.log2(x) if log2_x else x, y) for x, y in ((float(a), float(b)) for a, b in pts) if usable(x, y)]
        for name, pts in series.items()
    }
    pts_all = [p for pts in clean.values() for p in pts]
    pw = _W - _ML - _MR
    legend = _legend_rows(list(clean), pw) if len(clean) > 1 else []
    height = _MT + _PH + 44 + len(legend) * _LEGEND_ROW + (6 if legend else 0)
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" viewBox="0 0 {_W} {height}" '
            f'font-family="sans-serif" font-size="11" role="img">'
        ),
        f'<text x="{_W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    if not pts_all:
        out.append(f'<text x="{_W / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(out)
    xs, ys = [p[0] for p in pts_all], [p[1] for p in pts_all]
    whole_x = log2_x or all(x == int(x) for x in xs)
    whole_y = all(y == int(y) for y in ys)
    if log2_x:
        # A tick at each whole power of two in range (at most about 8), else at the two ends.
        x0, x1 = min(xs), max(xs)
        step = max(1, math.ceil((x1 - x0) / 8))
        x_ticks = list(range(math.ceil(x0), math.floor(x1) + 1, step)) or [x0, x1]
        if x0 == x1:
            x0, x1 = x0 - 1, x1 + 1
        x_labels = [_fmt_log2(t) for t in x_ticks]
        x_suffix = ""
    else:
        x_ticks = nice_ticks(min(0.0, min(xs)), max(xs), 9, whole_x)
        # The axis ends at the last point (the last step), not at the next round tick past it.
        x0, x1 = x_ticks[0], max(xs) if max(xs) > x_ticks[0] else x_ticks[-1]
        x_ticks = [t for t in x_ticks if t <= x1 + 1e-9 * abs(x1)]
        x_labels, x_suffix = _tick_labels(x_ticks)
    y_ticks = nice_ticks(
        min(0.0, min(ys)) if y_from_zero else min(ys), max(0.0, max(ys)) if y_from_zero else max(ys), 7, whole_y
    )
    y0, y1 = y_ticks[0], y_ticks[-1]
    y_labels, y_suffix = _tick_labels(y_ticks)
    ph = _PH

    def sx(x: float) -> float:
        return _ML + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return _MT + ph - (y - y0) / (y1 - y0) * ph

    for t, label in zip(y_ticks, y_labels):
        Y = sy(t)
        out.append(f'<line x1="{_ML}" y1="{Y:.1f}" x2="{_ML + pw}" y2="{Y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_ML - 6}" y="{Y + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t, label in zip(x_ticks, x_labels):
        X = sx(t)
        out.append(f'<line x1="{X:.1f}" y1="{_MT + ph}" x2="{X:.1f}" y2="{_MT + ph + 4}" stroke="#999"/>')
        out.append(f'<text x="{X:.1f}" y="{_MT + ph + 16}" text-anchor="middle">{label}</text>')
    mark_labels = []  # drawn over the lines, so they stay readable
    for x, label in marks or []:
        X = sx(math.log2(x) if log2_x else x) if x > 0 or not log2_x else None
        if X is not None and _ML <= X <= _ML + pw:
            out.append(
                f'<line x1="{X:.1f}" y1="{_MT}" x2="{X:.1f}" y2="{_MT + ph}" stroke="#666" stroke-dasharray="4 3"/>'
            )
            anchor = "start" if X < _ML + pw * 0.7 else "end"
            dx = 4 if anchor == "start" else -4
            mark_labels.append(
                f'<text x="{X + dx:.1f}" y="{_MT + ph - 6}" text-anchor="{anchor}" fill="#444" stroke="#fff" '
                f'stroke-width="3" paint-order="stroke">{escape(label)}</text>'
            )
    out.append(f'<text x="{_ML + pw / 2}" y="{_MT + ph + 34}" text-anchor="middle">{escape(x_label + x_suffix)}</text>')
    out.append(
        f'<text x="14" y="{_MT + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_MT + ph / 2})">{escape(y_label + y_suffix)}</text>'
    )
    colors = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(clean)}
    for name, pts in clean.items():
        color = colors[name]
        pts = sorted(pts)
        if len(pts) > 1:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}"/>')
        if len(pts) <= 30:
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
    out.extend(mark_labels)
    names = list(clean)
    for r, row in enumerate(legend):
        ly = _MT + ph + 50 + r * _LEGEND_ROW
        lx = float(_ML)
        for i, text in row:
            if i >= 0:
                out.append(f'<rect x="{lx:.0f}" y="{ly - 6}" width="14" height="3" fill="{colors[names[i]]}"/>')
            out.append(f'<text x="{lx + 20:.0f}" y="{ly}">{escape(text)}</text>')
            lx += 22 + len(text) * _CHAR_W + 14
    out.append("</svg>")
    return "".join(out)


def _fmt_log2(t: float) -> str:
    """Label of a log2-axis tick: the value 2**t, exact for whole powers."""
    v = 2.0**t
    return f"{v:,.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.3g}"


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


def _schedule(records: list[dict[str, Any]], config: dict, steps: Any) -> tuple[list[tuple[float, float]], int] | None:
    """The learning-rate schedule the run used, whole (warmup included), and the warmup's length in steps:
    core/loop.py's linear warmup from lr / (w + 1) at step 0 to lr at step w = round(warmup_ratio * steps),
    then linear decay to 0 at the last step. Returned only when every logged lr lies on it (a recipe with
    another schedule, such as one restarted per phase, gets None and its chart shows the logged points)."""
    train = config.get("train")
    logged = _series(records, "train", "lr")
    if not isinstance(train, dict) or not logged or not _num(train.get("lr")) or not _num(train.get("warmup_ratio")):
        return None
    n = int(steps) if _num(steps) else int(max(x for x, _ in logged))
    peak, warmup = float(train["lr"]), int(round(float(train["warmup_ratio"]) * n))
    if n < 1 or warmup >= n:
        return None
    points = [(0.0, peak / (warmup + 1)), (float(warmup), peak), (float(n), 0.0)] if warmup else [(0.0, peak), (n, 0.0)]

    def planned(step: float) -> float:
        if step < warmup:
            return peak * (step + 1) / (warmup + 1)
        return peak * max(0.0, (n - step) / (n - warmup))

    if all(abs(planned(x) - y) <= 1e-6 * peak for x, y in logged):
        return points, warmup
    return None


def _charts(records: list[dict[str, Any]], config: dict, steps: Any) -> str:
    parts = []
    schedule = _schedule(records, config, steps)
    marks = [(schedule[1], f"warmup ends (step {schedule[1]:,})")] if schedule and schedule[1] else []
    loss = {"train loss": _series(records, "train", "loss"), "eval loss": _series(records, "eval", "loss")}
    loss = {k: v for k, v in loss.items() if v}
    if loss:
        parts.append(line_chart_svg(loss, "Loss", "step", "loss", marks=marks))
    keys: list[str] = []
    for r in records:
        if r.get("split") == "eval":
            keys += [k for k, v in r.items() if k not in ("step", "epoch", "loss") and _num(v) and k not in keys]
    evals = {k: s for k in keys if (s := _series(records, "eval", k))}
    if evals:
        rates = all(0 <= y <= 1 for s in evals.values() for _, y in s)  # accuracy, F1: on an axis from 0
        parts.append(line_chart_svg(evals, "Evaluation metrics", "step", "value", y_from_zero=rates))
    lr = _series(records, "train", "lr")
    if lr:
        if schedule:  # the logged points and the schedule's corners (its exact values between two logs)
            lr = sorted(set(lr) | set(schedule[0]))
        parts.append(line_chart_svg({"lr": lr}, "Learning rate", "step", "lr", y_from_zero=True, marks=marks))
    return "".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{int(minutes)} min {int(seconds % 60)} s"
    return f"{int(minutes // 60)} h {int(minutes % 60)} min"


def _headline(final: dict, config: dict) -> str:
    """The numbers a reader looks for first: the headline metric, the training time, the trainable parameters."""
    boxes = []
    metrics = final.get("metrics") if isinstance(final.get("metrics"), dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    wanted = train.get("metric")
    name = wanted if wanted in metrics else next((k for k, v in metrics.items() if _num(v)), None)
    if name is not None and _num(metrics[name]):
        where = f" on {final['eval_data']}" if "eval_data" in final else ""
        size = f" ({final['n_examples']:,} examples)" if _num(final.get("n_examples")) else ""
        boxes.append((f"{metrics[name]:.4f}", f"{name}{where}{size}"))
    if _num(final.get("train_seconds")):
        steps = f", {final['steps']:,} steps" if _num(final.get("steps")) else ""
        boxes.append((_duration(final["train_seconds"]), f"training time{steps}"))
    trainable = final.get("trainable_parameters", final.get("student_parameters"))
    if _num(trainable):
        total = final.get("total_parameters")
        share = f" of {total:,} ({100 * trainable / total:.2f}%)" if _num(total) and total else ""
        boxes.append((f"{trainable:,}", f"trainable parameters{share}"))
    if not boxes:
        return ""
    inner = "".join(f"<div><b>{escape(v)}</b><span>{escape(label)}</span></div>" for v, label in boxes)
    return f'<div class="headline">{inner}</div>'


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

    final = _read_json(run_dir / "final.json")
    final = final if isinstance(final, dict) else None
    body = [f"<h1>{escape(title)}</h1>", f"<p>Run directory: <code>{escape(str(run_dir))}</code></p>"]
    if final:
        body.append(_headline(final, config))
    charts = _charts(_read_metrics(run_dir / "metrics.jsonl"), config, final.get("steps") if final else None)
    if charts:
        body.append("<h2>Training curves</h2>" + charts)
    if final:
        body.append("<h2>Final evaluation</h2>" + _eval_html(final))
    eval_dir = run_dir / "eval"
    others = sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []
    other_html = [
        f"<h3>{escape(p.stem)}</h3>" + _eval_html(res) for p in others if isinstance(res := _read_json(p), dict)
    ]
    if other_html:
        body.append("<h2>Other evaluations</h2>" + "".join(other_html))
    for sec_title, fragment in sections or []:
        body.append(f"<h2>{escape(sec_title)}</h2>{fragment}")
    manifest = _read_json(run_dir / "manifest.json")
    if isinstance(manifest, dict) and manifest:
        body.append("<h2>Manifest</h2>" + _manifest_html(manifest))
    body.append(f"<h2>Config</h2><pre>{escape(config_text)}</pre>")

    page = html_page(title, "\n".join(body))
    out = run_dir / "report.html"
    tmp = run_dir / "report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
