import json
import re
from pathlib import Path

from lmforge.core.report import confusion_matrix_html, line_chart_svg, write_report

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
