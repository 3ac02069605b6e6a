"""benchmarks/continual/bench.py's pieces that could go wrong without a run failing: the validation carve,
the class-incremental files, the settings refusal, the tuned settings a strategy inherits, and the table
maths (mean and spread over runs). The script sits beside the package, so it is imported by path."""

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "continual" / "bench.py"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = load("continual_bench", SCRIPT)
tables = bench.tables


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_validation_carve_is_balanced_disjoint_and_balanced_in_any_head(tmp_path):
    from lmforge.data.files import load_examples

    pool, validation = bench.carve("trec6", tmp_path)
    pool_rows, held = read(pool), read(validation)
    train = load_examples("trec6:train")
    per_class = Counter(r["label"] for r in held)
    assert set(per_class.values()) == {bench.VALIDATION_PER_CLASS} and len(per_class) == 6
    # disjoint, and together the whole training split (as multisets: a question may appear twice)
    key = lambda r: (r["text"], r["label"])  # noqa: E731
    assert Counter(map(key, pool_rows)) + Counter(map(key, held)) == Counter(zip(train.texts, train.labels))
    assert len(pool_rows) + len(held) == len(train)
    # data.max_eval_examples keeps a head of the file: it must stay balanced
    head = Counter(r["label"] for r in held[:100])
    assert max(head.values()) - min(head.values()) <= 1
    assert bench.carve("trec6", tmp_path) == (pool, validation)  # written once, then reused


def test_class_incremental_tasks_split_agnews_classes_two_by_two(tmp_path):
    specs = bench.class_tasks(tmp_path)
    assert [Path(s.split("|")[0]).stem for s in specs] == ["world_sports", "business_scitech"]
    for spec, labels in zip(specs, bench.CLASS_TASKS.values()):
        for path in spec.split("|"):
            assert {r["label"] for r in read(Path(path))} == set(labels)


def test_a_run_folder_made_with_other_settings_stops_the_benchmark_naming_the_key(tmp_path):
    from lmforge.cli.recipes import find_recipe
    from lmforge.registry import load_run_config

    sets = ["continual.tasks=sst2,trec6", "train.lr=5e-5"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    made = load_run_config(find_recipe(bench.STREAM_RECIPE), [*sets[:1], "train.lr=1e-4"])
    (run_dir / "config.yaml").write_text(made.to_yaml())
    with pytest.raises(SystemExit, match=r"other settings \(train\.lr\)"):
        bench.lmforge_run(bench.STREAM_RECIPE, run_dir, sets)


def test_strategies_tuned_on_a_base_take_its_chosen_rate():
    chosen = {"sequential": {"value": 1e-4}, "adapters": {"value": 5e-4}}
    assert bench.tuned_sets("replay", 200, chosen) == ["continual.strategy=replay", "continual.replay_size=200",
                                                       "train.lr=0.0001"]  # fmt: skip
    assert bench.tuned_sets("olora", 0.1, chosen)[-1] == "train.lr=0.0005"
    assert bench.tuned_sets("sequential", 5e-5, {}) == ["continual.strategy=sequential", "train.lr=5e-05"]


def test_mean_and_spread_over_runs_and_the_table_cells():
    runs = [{"average_accuracy": a, "forgetting": f, "backward_transfer": None} for a, f in
            ((0.70, 0.10), (0.74, 0.06), (0.72, 0.08))]  # fmt: skip
    summary = tables.summarize(runs)
    acc = summary["average_accuracy"]
    assert acc["mean"] == pytest.approx(0.72) and acc["std"] == pytest.approx(0.02)  # sample std: n - 1
    assert (acc["min"], acc["max"], acc["n"]) == (0.70, 0.74, 3)
    assert summary["backward_transfer"] is None  # joint: no matrix, no transfer
    assert tables.points(acc) == "72.0 ± 2.0" and tables.points(None) == "-"
    one = tables.mean_spread([0.5])
    assert one["std"] is None and tables.points(one) == "50.0"
    assert tables.scale(summary["forgetting"])["mean"] == pytest.approx(8.0)
