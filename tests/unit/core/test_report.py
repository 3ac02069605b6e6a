import json
import math
import re
from html import escape
from pathlib import Path

import pytest

from lmforge.core.report import _tick_labels, confusion_matrix_html, line_chart_svg, nice_ticks, write_report

CONFIG = """method: classify
model:
  name: distilbert-base-uncased
data:
  name: sst2
train:
  lr: 5.0e-05
classify:
  note: "a < b & c"
"""


def _make_run(run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(CONFIG)
    manifest = {
        "lmforge_version": "0.1.0",
        "created": "2024-01-01T00:00:00",
        "git_commit": "abc123",
        "seed": 13,
        "hardware": {"cpu": "x86_64"},
        "packages": {"numpy": "1.26.4", "pyyaml": "6.0"},
        "data": {"train": "sst2:train"},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    lines = [
        {"split": "train", "step": 10, "epoch": 0.1, "loss": 0.69, "lr": 4.9e-05},
        {"split": "train", "step": 20, "epoch": 0.2, "loss": 0.55, "lr": 4.8e-05, "note": "x"},
        {"split": "eval", "step": 20, "epoch": 0.2, "loss": 0.5, "accuracy": 0.8, "macro_f1": 0.79},
        {"split": "train", "step": 30, "epoch": 0.3, "loss": 0.41, "lr": 4.7e-05},
        {"split": "eval", "step": 30, "epoch": 0.3, "loss": 0.35, "accuracy": 0.87, "macro_f1": 0.86},
    ]
    text = "\n".join(json.dumps(rec) for rec in lines) + '\n{"split": "train", "step": 40, "lo'
    (run_dir / "metrics.jsonl").write_text(text)
    final = {
        "metrics": {"accuracy": 0.87, "macro_f1": 0.86, "loss": 0.35},
        "labels": ["negative", "<script>alert(1)</script>"],
        "confusion": [[400, 28], [60, 384]],
        "eval_data": "sst2:dev",
        "n_examples": 872,
    }
    (run_dir / "final.json").write_text(json.dumps(final))
    (run_dir / "eval").mkdir()
    other = dict(final, labels=["neg", "pos"], confusion=[[11, 2], [3, 17]], eval_data="imdb:test")
    (run_dir / "eval" / "imdb_test.json").write_text(json.dumps(other))


def test_full_report(tmp_path: Path) -> None:
    _make_run(tmp_path)
    out = write_report(tmp_path, sections=[("Extra", "<p id='extra'>hello</p>")])
    assert out == tmp_path / "report.html"
    assert out.exists()
    assert not (tmp_path / "report.html.tmp").exists()
    html = out.read_text()
    assert "<svg" in html
    assert html.count("<svg") == 3
    assert 'src="http' not in html and "src='http" not in html
    assert 'href="http' not in html and "href='http" not in html
    assert html.replace("http://www.w3.org/2000/svg", "").count("http") == 0
    assert "a &lt; b &amp; c" in html
    assert "distilbert-base-uncased" in html and "classify" in html
    for count in ("400", "28", "60", "384", "11", "17"):
        assert f">{count}</td>" in html
    assert "negative" in html and "neg" in html and "pos" in html
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Final evaluation" in html and "Other evaluations" in html and "imdb_test" in html
    assert "0.8700" in html
    assert "macro_f1" in html
    assert "numpy" in html and "<details>" in html
    assert "<p id='extra'>hello</p>" in html


def test_config_only(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    out = write_report(tmp_path)
    html = out.read_text()
    assert out.exists()
    assert "<svg" not in html
    assert "Final evaluation" not in html
    assert "a &lt; b &amp; c" in html


def test_line_chart_empty_and_single_point() -> None:
    empty = line_chart_svg({"a": []}, "Empty", "x", "y")
    assert empty.startswith("<svg") and empty.endswith("</svg>")
    assert "no data" in empty
    assert line_chart_svg({}, "None", "x", "y").endswith("</svg>")
    single = line_chart_svg({"a": [(1.0, 2.0)], "b": []}, "One <pt>", "step", "loss")
    assert "<circle" in single and "nan" not in single
    assert "One &lt;pt&gt;" in single
    two = line_chart_svg({"a": [(0, 1), (1, 2)], "b": [(0, 2), (1, 1)]}, "T", "x", "y")
    assert two.count("<polyline") == 2


def test_line_chart_log2_axis_spaces_powers_of_two_evenly() -> None:
    svg = line_chart_svg({"a": [(0, 5.0), (1, 1.0), (2, 2.0), (4, 3.0), (8, 4.0)]}, "T", "k", "y", log2_x=True)
    ticks = re.findall(r'<text x="([0-9.]+)" y="[0-9.]+" text-anchor="middle">([0-9.]+)</text>', svg)
    assert [label for _, label in ticks] == ["1", "2", "4", "8"]
    gaps = [float(b[0]) - float(a[0]) for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) - min(gaps) < 0.2 and min(gaps) > 10  # evenly spaced on the log axis (1-decimal coordinates)
    # The point at x = 0 has no place on a log axis and is left out: four points remain.
    assert svg.count("<circle") == 4
    within_one_octave = line_chart_svg({"a": [(3, 1.0), (3.5, 2.0)]}, "T", "k", "y", log2_x=True)
    assert ">3</text>" in within_one_octave and ">3.5</text>" in within_one_octave


def test_confusion_matrix_html() -> None:
    table = confusion_matrix_html(["a", "b"], [[3, 1], [0, 0]])
    assert table.startswith("<table") and ">3</td>" in table and ">0</td>" in table


# ---- round ticks, axes from zero, legends that fit, the warmup and the page's order -------------------------


def _is_round(step: float) -> bool:
    """1, 2 or 5 times a power of ten."""
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    return any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5))


@pytest.mark.parametrize(
    "lo, hi, integer",
    [(0.6931, 0.6941, False), (0, 17.5, True), (5, 60, True), (0, 5e-5, False), (-0.3, 0.8, False), (3, 3, True)],
)
def test_nice_ticks_are_round_cover_the_range_and_whole_for_counts(lo, hi, integer):
    ticks = nice_ticks(lo, hi, 7, integer)
    steps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert 2 <= len(ticks) <= 7
    assert ticks[0] <= lo and ticks[-1] >= hi
    assert max(steps) - min(steps) < 1e-9 * max(1.0, abs(hi)) and _is_round(steps[0])
    for t in ticks:  # every tick a whole multiple of the step, so its label is short
        assert abs(t / steps[0] - round(t / steps[0])) < 1e-6
    if integer:
        assert all(t == int(t) for t in ticks) and steps[0] >= 1


def test_nice_ticks_of_the_reviewed_loss_range():
    # The loss axis a review found ticked at 0.6931 ... 0.6941: now on round values, with short labels.
    ticks = nice_ticks(0.6931, 0.6941)
    assert ticks == [0.693, 0.6932, 0.6934, 0.6936, 0.6938, 0.694, 0.6942]
    assert _tick_labels(ticks) == (["0.6930", "0.6932", "0.6934", "0.6936", "0.6938", "0.6940", "0.6942"], "")
    # 35 steps: never a tick at 17.5
    assert nice_ticks(0, 35, 9, integer=True) == [0, 5, 10, 15, 20, 25, 30, 35]
    assert _tick_labels(nice_ticks(0, 5e-5)) == (["0", "1", "2", "3", "4", "5"], " (\u00d71e-5)")


def _tick_values(svg: str, anchor: str) -> list[str]:
    return re.findall(rf'<text x="[0-9.]+" y="[0-9.]+" text-anchor="{anchor}">([^<]+)</text>', svg)


def test_rate_axes_start_at_zero_and_step_axes_have_whole_ticks():
    series = {"a": [(5, 0.62), (10, 0.63), (15, 0.64)], "b": [(5, 0.6), (10, 0.61), (15, 0.65)]}
    svg = line_chart_svg(series, "T", "step", "accuracy", y_from_zero=True)
    y_labels = _tick_values(svg, "end")
    assert y_labels[0] == "0" and float(y_labels[-1]) >= 0.65
    *x_labels, x_axis_label = _tick_values(svg, "middle")
    assert x_axis_label == "step" and x_labels[0] == "0" and all(label.isdigit() for label in x_labels)
    zoomed = _tick_values(line_chart_svg(series, "T", "step", "accuracy"), "end")
    assert float(zoomed[0]) > 0.5  # without y_from_zero the axis follows the data


def _svg_size(svg: str) -> tuple[float, float]:
    width, height = re.search(r'<svg [^>]*width="([0-9.]+)" height="([0-9.]+)"', svg).groups()
    return float(width), float(height)


def test_legend_fits_inside_the_image():
    long_names = [
        "SFT + DPO verifier (T = 1)",
        "V-STaR [1 iteration] (RFT's generator, k = 8) + DPO verifier",
        "V-STaR (T = 2), DPO verifier",
        "V-STaR (T = 2), DPO verifier, mean likelihood",
        "V-STaR (T = 2), DPO verifier, implicit reward",
        "a name so long that it cannot fit on one legend row however the entries are arranged, so it wraps "
        "onto a second row at a space and is never cut at the edge of the image",
    ]
    svg = line_chart_svg({n: [(1, i), (2, i + 1)] for i, n in enumerate(long_names)}, "T", "k", "y", log2_x=True)
    width, height = _svg_size(svg)
    entries = re.findall(r'<text x="([0-9.]+)" y="([0-9.]+)">([^<]+)</text>', svg)
    shown = " ".join(text for _, _, text in entries)
    for name in long_names:  # every word of every name is there: nothing is cut
        assert all(word in shown for word in escape(name).split(" "))
    for x, y, text in entries:
        assert float(y) < height and float(x) + len(text) * 7.0 <= width


def test_learning_rate_chart_shows_the_warmup(tmp_path: Path) -> None:
    # 100 steps, warmup_ratio 0.1: the lr is logged every 20 steps, after the warmup (10 steps) ended.
    (tmp_path / "config.yaml").write_text("method: finetune\ntrain:\n  lr: 1.0e-3\n  warmup_ratio: 0.1\n")
    lr = [1e-3 * min((s + 1) / 11, (100 - s) / 90) for s in range(101)]
    lines = [{"split": "train", "step": s, "loss": 1.0 / s, "lr": lr[s]} for s in range(20, 101, 20)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    (tmp_path / "final.json").write_text(json.dumps({"metrics": {"accuracy": 0.5}, "steps": 100}))
    html = write_report(tmp_path).read_text()
    assert html.count("warmup ends (step 10)") == 2  # on the loss and the learning-rate charts
    lr_chart = html[html.index("Learning rate") :]
    points = re.findall(r'<circle cx="([0-9.]+)" cy="([0-9.]+)"', lr_chart)
    assert len(points) == 7  # the 5 logged values, the first step's and the peak
    # A schedule the logs contradict (a recipe with phases) is not drawn: only the logged points.
    lines[2]["lr"] = 1e-3
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    html = write_report(tmp_path).read_text()
    assert "warmup ends" not in html
    assert len(re.findall(r"<circle", html[html.index("Learning rate") :])) == 5


def test_headline_numbers_first_and_config_last(tmp_path: Path) -> None:
    _make_run(tmp_path)
    final = json.loads((tmp_path / "final.json").read_text())
    final.update(steps=30, train_seconds=754.2, trainable_parameters=147_456, total_parameters=22_861_056)
    (tmp_path / "final.json").write_text(json.dumps(final))
    html = write_report(tmp_path, sections=[("Extra", "<p>method picture</p>")]).read_text()
    headline = html[html.index('class="headline"') : html.index("Training curves")]
    assert "0.8700" in headline and "accuracy on sst2:dev (872 examples)" in headline
    assert "12 min 34 s" in headline and "30 steps" in headline
    assert "147,456" in headline and "of 22,861,056 (0.65%)" in headline
    order = [html.index(s) for s in ("headline", "Training curves", "Final evaluation", "Extra", "Manifest", "Config")]
    assert order == sorted(order)
