"""`train.report_to`: TensorBoard's event files and MLflow's run, read back with each tracker's own reader, hold the
numbers of metrics.jsonl; the run folder is written the same without them; a resumed run continues the same
tracker runs; a bad tracker is refused before anything is written.

The run is the kernel's loop on tiny-bert and made-up token ids (as tests/unit/core/test_training_run.py); MLflow
writes to a file store under the test's own folder (MLflow 3 refuses a file store unless
MLFLOW_ALLOW_FILE_STORE=true; its default, a SQLite file, needs SQLAlchemy, which mlflow-skinny lacks)."""

import json
import sys

import pytest
from kernel_runs import config, one_thread, records, train  # noqa: F401 (one_thread: an autouse fixture)

from lmforge.config import TrainConfig
from lmforge.core.loop import make_accelerator
from lmforge.errors import Interrupted, UserError


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """MLFLOW_TRACKING_URI: a file store of this module's own (set for the module, then put back)."""
    mp = pytest.MonkeyPatch()
    store = tmp_path_factory.mktemp("mlruns")
    mp.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    yield store
    mp.undo()


def tensorboard_scalars(log_dir, tag):
    """(step, value) pairs of one tag, as TensorBoard shows them (events past a restart's purge step hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def mlflow_history(run_id, key):
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mlflow_store):
    """The same run twice: without trackers, and with TensorBoard and MLflow."""
    root = tmp_path_factory.mktemp("runs")
    train(config(), root / "plain")
    train(config(report_to=["tensorboard", "mlflow"]), root / "tracked")
    return root / "plain", root / "tracked"


def test_tensorboard_event_files_hold_the_metrics_jsonl_numbers(runs):
    _, tracked = runs
    assert json.loads((tracked / "manifest.json").read_text())["trackers"]["tensorboard"] == {"log_dir": "tensorboard"}
    for split, key in (("train", "loss"), ("train", "lr"), ("eval", "loss"), ("eval", "accuracy")):
        expected = [(r["step"], r[key]) for r in records(tracked, split)]
        got = tensorboard_scalars(tracked / "tensorboard", f"{split}/{key}")
        assert [step for step, _ in got] == [step for step, _ in expected] == ([1, 2, 3, 4, 5, 6] if split == "train"
                                                                               else [3, 6])  # fmt: skip
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)  # TensorBoard keeps float32


def test_the_mlflow_run_holds_the_metrics_jsonl_numbers_and_the_config(runs):
    from mlflow.tracking import MlflowClient

    _, tracked = runs
    manifest = json.loads((tracked / "manifest.json").read_text())
    recorded = manifest["trackers"]["mlflow"]
    assert manifest["world_size"] == 1
    run = MlflowClient().get_run(recorded["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.info.experiment_id == recorded["experiment_id"]
    assert run.data.tags["lmforge.run_dir"] == str(tracked.resolve())
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.report_to"] == "tensorboard,mlflow"
    for split, key in (("train", "loss"), ("train", "lr"), ("train", "epoch"), ("eval", "macro_f1")):
        assert mlflow_history(recorded["run_id"], f"{split}/{key}") == [
            (r["step"], r[key]) for r in records(tracked, split)
        ]
    final = json.loads((tracked / "final.json").read_text())["metrics"]
    assert run.data.metrics["final/accuracy"] == final["accuracy"]


def test_the_run_folder_is_written_the_same_with_and_without_trackers(runs):
    plain, tracked = runs
    assert (plain / "metrics.jsonl").read_bytes() == (tracked / "metrics.jsonl").read_bytes()
    final = [json.loads((run / "final.json").read_text()) for run in runs]
    for saved in final:
        saved.pop("train_seconds")  # wall time
    assert final[0] == final[1]
    files = [sorted(str(p.relative_to(run)) for p in run.rglob("*") if "tensorboard" not in p.parts) for run in runs]
    assert files[0] == files[1]
    assert sorted(p.name for p in tracked.iterdir()) == sorted([*(p.name for p in plain.iterdir()), "tensorboard"])
    manifests = [json.loads((run / "manifest.json").read_text()) for run in runs]
    assert manifests[0]["trackers"] == {} and manifests[0]["world_size"] == 1
    for manifest in manifests:
        manifest.pop("created"), manifest.pop("trackers")
    assert manifests[0] == manifests[1]


def test_a_resumed_run_continues_the_same_tensorboard_folder_and_mlflow_run(runs, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    _, uninterrupted = runs
    run_dir = tmp_path / "killed"
    cfg = config(report_to=["tensorboard", "mlflow"], save_every=2)
    with pytest.raises(RuntimeError, match="killed after step 3"):
        train(cfg, run_dir, crash_after=3)  # step 3 logged, the last checkpoint is step 2's
    mlflow.end_run(status="FAILED")  # what MLflow's exit handler does when the process dies
    run_id = json.loads((run_dir / "manifest.json").read_text())["trackers"]["mlflow"]["run_id"]
    assert mlflow_history(run_id, "train/loss")[-1][0] == 3

    t, _ = train(cfg, run_dir, resume=True)
    assert t.resumed_from.name == "step-00000002"
    assert json.loads((run_dir / "manifest.json").read_text())["trackers"]["mlflow"]["run_id"] == run_id
    expected = [(r["step"], r["loss"]) for r in records(run_dir)]
    assert [r["loss"] for r in records(run_dir)] == [r["loss"] for r in records(uninterrupted)]  # exact resume
    # TensorBoard: the events of step 3 logged before the kill are hidden by the resumed writer's purge step
    got = tensorboard_scalars(run_dir / "tensorboard", "train/loss")
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)
    # MLflow keeps every value it was sent: step 3 twice, the same number both times
    history = mlflow_history(run_id, "train/loss")
    assert [s for s, _ in history] == [1, 2, 3, 3, 4, 5, 6]
    assert sorted(set(history)) == sorted(expected)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    tagged = MlflowClient().search_runs([run.info.experiment_id], f"tags.`lmforge.run_dir` = '{run_dir.resolve()}'")
    assert [r.info.run_id for r in tagged] == [run_id]  # one MLflow run for the run folder


def test_a_run_stopped_by_a_signal_ends_its_mlflow_run_as_killed_and_resumes_it(mlflow_store, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = config(report_to=["mlflow"])
    with pytest.raises(Interrupted, match="SIGTERM at step 4"):
        train(cfg, tmp_path / "run", stop_at=4)
    run_id = json.loads((tmp_path / "run" / "manifest.json").read_text())["trackers"]["mlflow"]["run_id"]
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    train(cfg, tmp_path / "run", resume=True)
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert [s for s, _ in mlflow_history(run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]  # stopped at a checkpoint


def test_an_unknown_tracker_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(
        UserError, match=r"train.report_to: unknown tracker 'neptune' \(one of: tensorboard, mlflow, wandb\)"
    ):
        train(config(report_to=["tensorboard", "neptune"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tracker_without_its_package_is_refused_with_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: importlib finds no module
    with pytest.raises(
        UserError, match=r"train.report_to: tensorboard needs the package tensorboard: pip install tensorboard"
    ):
        train(config(report_to=["tensorboard"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_unusable_mlflow_store_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses its file store without it
    with pytest.raises(UserError, match=r"mlflow cannot use the tracking store file://.*set MLFLOW_ALLOW_FILE_STORE"):
        train(config(report_to=["mlflow"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_fails_to_start_leaves_no_run_folder(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)  # Accelerate's MLflowTracker continues this run, which is not there
    with pytest.raises(UserError, match="train.report_to: tensorboard, mlflow could not start: Run .* not found"):
        train(config(report_to=["tensorboard", "mlflow"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # tensorboard/ had been made: removed with the rest


def test_a_loop_that_sends_no_metrics_to_trackers_refuses_report_to():
    with pytest.raises(UserError, match="train.report_to: not available here"):
        make_accelerator(TrainConfig(report_to=["tensorboard"]))
