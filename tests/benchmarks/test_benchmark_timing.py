"""benchmarks/timing.py (the shared timing rules) and adalora bench.py's reuse decision. Benchmarks are
scripts beside the package, so they are imported by path."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


timing = load("timing", BENCHMARKS / "timing.py")
# bench.py's `import timing` finds the module registered above
adalora_bench = load("adalora_bench", BENCHMARKS / "adalora" / "bench.py")


class FakeClock:
    """Time moves only when an arm says so, so each call's seconds are known exactly."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_warmup_is_kept_apart_and_rounds_are_interleaved():
    clock, calls = FakeClock(), []

    def arm(name, seconds):
        def call():
            calls.append(name)
            # the first call of each arm (the warm-up) is slow, as a cold cache would be
            clock.now += 100.0 if calls.count(name) == 1 else seconds

        return call

    result = timing.time_rounds({"a": arm("a", 1.0), "b": arm("b", 2.0), "c": arm("c", 3.0)}, 3, clock, lambda: 0.1)
    assert [r.arm for r in result.warmup] == ["a", "b", "c"]
    assert all(r.seconds == 100.0 and r.round == -1 for r in result.warmup)
    # each round runs every arm once, the starting arm rotating
    assert result.order() == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert calls == ["a", "b", "c", *result.order()]
    assert result.seconds() == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0], "c": [3.0, 3.0, 3.0]}


def test_an_arm_may_report_its_own_seconds():
    result = timing.time_rounds({"a": lambda: 0.25}, 3, FakeClock(), lambda: 0.0)
    assert result.seconds() == {"a": [0.25, 0.25, 0.25]}


def test_fewer_than_three_rounds_are_refused():
    with pytest.raises(ValueError, match="at least 3"):
        timing.time_rounds({"a": lambda: 1.0}, 2)


def test_load_is_read_at_start_and_end_and_a_loaded_row_is_refused():
    warmup = [0.5, 0.6, 0.7, 0.8]  # a, b
    rounds = [1.0, 1.1, 1.2, 5.0, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 1.95]  # a b, b a, a b: start, end of each
    readings = iter(warmup + rounds)
    result = timing.time_rounds({"a": lambda: 1.0, "b": lambda: 2.0}, 3, FakeClock(), lambda: next(readings))
    assert [(r.load_start, r.load_end) for r in result.warmup] == [(0.5, 0.6), (0.7, 0.8)]
    assert [(r.arm, r.load_start, r.load_end) for r in result.rows][:2] == [("a", 1.0, 1.1), ("b", 1.2, 5.0)]
    assert result.seconds(max_load=2.0) == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0]}

    line = timing.load_refusal("timing0-b", 1.2, 5.0, 2.0)
    assert line.startswith("timing0-b: not written") and "1.20 at start" in line and "5.00 at end" in line
    assert timing.load_refusal("timing0-a", 1.0, 2.0, 2.0) is None  # at the threshold: written


def test_default_threshold_is_the_cpu_count_plus_a_half():
    import os

    assert timing.default_max_load() == float(os.cpu_count()) + 0.5


def test_median_spread_and_ratios_on_known_values():
    summary = timing.summarize({"a": [5.0, 1.0, 3.0, 2.0, 4.0], "b": [10.0, 30.0, 20.0]})
    assert summary["a"] == {"rounds": 5, "median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0, "iqr": 2.0}
    assert summary["b"]["median"] == 20.0 and (summary["b"]["q1"], summary["b"]["q3"]) == (15.0, 25.0)
    assert timing.median_ratios(summary, [("a", "b"), ("a", "missing")]) == {"a / b": 0.15}
    line = timing.format_summary(summary)[0]
    assert "median" in line and "1.0000-5.0000" in line and "IQR 2.0000" in line


def test_reused_line_names_each_row_with_date_and_commit():
    line = timing.reused_line(
        [
            {"id": "timing0-sst2-lora_r2", "date": "2026-12-01T10:00:00+00:00", "commit": "f951668abcdef0123456"},
            {"id": "timing0-sst2-full", "commit": "0123456789abcdef"},
        ]
    )
    assert line.startswith("reused 2 stored row(s)")
    assert "timing0-sst2-lora_r2 (2026-12-01T10:00:00+00:00, f951668abc)" in line
    assert "timing0-sst2-full (date not recorded, 0123456789)" in line


def specs_in(tmp_path: Path) -> list[dict]:
    data = {"fit": {"path": "fit.jsonl", "sha256": "f"}, "validation": {"path": "v.jsonl", "sha256": "v"}}
    adalora_bench.WORK = tmp_path
    return list(adalora_bench.timing_specs(0, 2, data, []).values())


def test_adalora_timing_measures_afresh_unless_told_to_reuse(tmp_path):
    specs = specs_in(tmp_path)
    for s in specs:  # every row stored, with the same settings
        Path(s["out"]).write_text(json.dumps({"id": s["id"], "settings": s["settings"], "s_per_step": 1.0}))
    assert adalora_bench.stored_timing_rows(specs, reuse=False) is None
    reused = adalora_bench.stored_timing_rows(specs, reuse=True)
    assert [r["id"] for r in reused] == [s["id"] for s in specs]


def test_adalora_reuse_with_a_row_missing_measures_all(tmp_path, capsys):
    specs = specs_in(tmp_path)
    for s in specs[1:]:
        Path(s["out"]).write_text(json.dumps({"id": s["id"], "settings": s["settings"]}))
    assert adalora_bench.stored_timing_rows(specs, reuse=True) is None
    assert "is not stored; measuring every timing row afresh" in capsys.readouterr().out


def test_adalora_reuse_of_a_row_with_other_settings_stops(tmp_path):
    specs = specs_in(tmp_path)
    for s in specs:
        Path(s["out"]).write_text(json.dumps({"id": s["id"], "settings": {**s["settings"], "lr": 9.0}}))
    with pytest.raises(SystemExit, match="made with other settings"):
        adalora_bench.stored_timing_rows(specs, reuse=True)


def test_adalora_timing_writes_quiet_rows_only(tmp_path, monkeypatch, capsys):
    """measure_timing with each run's process replaced by its result: the warm-up round is not stored,
    a row timed above --max-load is not written, the others are, with their loads."""
    data = {"fit": {"path": "fit.jsonl", "sha256": "f"}, "validation": {"path": "v.jsonl", "sha256": "v"}}
    monkeypatch.setattr(adalora_bench, "WORK", tmp_path / "work")
    monkeypatch.setattr(adalora_bench, "RUNS", tmp_path / "scratch")
    (tmp_path / "work").mkdir()  # main() makes --work before any stage runs
    specs = {r: adalora_bench.timing_specs(r, 2, data, []) for r in range(-1, 3)}
    ran = []

    def run_job(s):  # the subprocess's part: one result per run
        ran.append(s["id"])
        return {**s, "s_per_step": 0.5 if s["stage"] == "timing-warmup" else 0.1, "date": "d", "commit": "c"}

    monkeypatch.setattr(adalora_bench, "run_job", run_job)
    n_arms = len(adalora_bench.ROWS)
    # 2 readings per run; the first measured run (round 0, first arm) ends under load 9
    readings = iter([0.1] * 2 * n_arms + [0.1, 9.0] + [0.1] * 2 * (3 * n_arms - 1))
    written = adalora_bench.measure_timing(specs, 3, max_load=2.0, load=lambda: next(readings))

    assert len(ran) == 4 * n_arms and all("warmup" in i for i in ran[:n_arms])
    refused = specs[0]["lora_r2"]
    assert f"{refused['id']}: not written" in capsys.readouterr().out
    assert not Path(refused["out"]).exists()
    assert len(written) == 3 * n_arms - 1 and all(r["s_per_step"] == 0.1 for r in written)
    stored = sorted(p.name for p in (tmp_path / "work").iterdir())
    assert len(stored) == 3 * n_arms - 1 and not any("warmup" in name for name in stored)
    assert json.loads(Path(specs[1]["full"]["out"]).read_text())["load_1min"] == {"start": 0.1, "end": 0.1}
    summary = adalora_bench.timing_summary(written)
    assert summary["lora_r2"]["rounds"] == 2 and summary["full"]["rounds"] == 3


def test_provenance_names_the_commit_and_whether_the_tree_differs(tmp_path):
    import subprocess

    records = load("records", BENCHMARKS / "records.py")
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout: no commit to record")
    commit = records.benchmark_provenance()["commit"]
    assert commit is not None and commit.split("+")[0] == head.stdout.strip()
    assert commit.endswith("+changes") == bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "benchmarks"],
            cwd=BENCHMARKS.parent,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
