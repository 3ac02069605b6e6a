"""Experiment trackers (`train.report_to`): the numbers of metrics.jsonl also sent to TensorBoard, MLflow or
Weights & Biases, through Accelerate's tracker classes (`accelerate.tracking`: `TensorBoardTracker`,
`MLflowTracker`, `WandBTracker`, started by `Accelerator.init_trackers` and fed by `Accelerator.log`; Accelerate's
guide "Experiment trackers", https://huggingface.co/docs/accelerate/usage_guides/tracking).

The run folder is written the same with or without them: metrics.jsonl stays the record, a tracker a copy.
Where each writes (docs/tracking.md):
- tensorboard: event files in the run folder's `tensorboard/` (its only addition to the folder);
- mlflow: MLflow's own tracking store, `MLFLOW_TRACKING_URI` (MLflow's default otherwise), experiment `lmforge`
  (`MLFLOW_EXPERIMENT_NAME` overrides it, as Accelerate reads it), one MLflow run per training run;
- wandb: W&B's own service and local folder, project `lmforge` (`WANDB_PROJECT` overrides it).
manifest.json's "trackers" records where each run went (the MLflow and W&B run ids), so that `--resume`
continues the same tracker run: MLflow and W&B by run id, TensorBoard by appending to its folder with
`purge_step`, which hides the events logged past the checkpoint the run resumes from, as metrics.jsonl is cut.
Only the main process starts and feeds the trackers.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from lmforge.core.stages import flat
from lmforge.errors import UserError, first_line, shown

# tracker name -> (the module it imports, the pip package that installs it)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny (or mlflow)"),
    "wandb": ("wandb", "wandb"),
}
PROJECT = "lmforge"  # MLflow's experiment and W&B's project
TENSORBOARD_DIR = "tensorboard"  # in the run folder


def check_report_to(report_to: list[str]) -> None:
    """Refuse an unknown tracker, or one whose package is not installed, naming it: call it before anything
    is written (Accelerate itself would only warn and drop a tracker it cannot import)."""
    for name in report_to:
        if name not in TRACKERS:
            raise UserError(f"train.report_to: unknown tracker {shown(name)} (one of: {', '.join(TRACKERS)})")
    for name in report_to:
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"train.report_to: {name} needs the package {module}: pip install {package}")


def check_mlflow_store() -> None:
    """Refuse, before the run folder is written, an MLflow tracking store that cannot be used: MLflow 3's
    default (a SQLite file) needs SQLAlchemy, which mlflow-skinny lacks, and its file store (`./mlruns`)
    is refused unless MLFLOW_ALLOW_FILE_STORE=true."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        if importlib.util.find_spec("sqlalchemy") is None:
            raise UserError(
                f"train.report_to: mlflow's tracking store {uri} is a database, which needs SQLAlchemy: "
                "pip install mlflow (mlflow-skinny lacks it), or set MLFLOW_TRACKING_URI to a server (docs/tracking.md)"
            )
    try:
        mlflow.tracking.MlflowClient().search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure of the store is the user's setting to fix
        hint = "MLFLOW_ALLOW_FILE_STORE=true" if "MLFLOW_ALLOW_FILE_STORE" in str(e) else "MLFLOW_TRACKING_URI"
        raise UserError(
            f"train.report_to: mlflow cannot use the tracking store {uri} ({first_line(e, 120)}); "
            f"set {hint} (docs/tracking.md)"
        ) from None


def make_trackers(report_to: list[str], run_dir: Path, run_name: str, recorded: dict, tags: dict[str, str]) -> list:
    """Accelerate's tracker objects for `report_to`, not started yet. `recorded` is manifest.json's "trackers"
    of the run being resumed ({} for a new run): the MLflow and W&B runs named there are continued."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker

    trackers = []
    for name in dict.fromkeys(report_to):  # a tracker named twice runs once
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(TENSORBOARD_DIR, run_dir))  # writes run_dir / tensorboard
        elif name == "mlflow":
            run_id = _recorded_run_id(recorded, "mlflow")
            trackers.append(MLflowTracker(PROJECT, run_id=run_id, run_name=run_name, tags=tags))
        elif name == "wandb":
            from accelerate.tracking import WandBTracker

            run_id = _recorded_run_id(recorded, "wandb")
            resumed = {"id": run_id, "resume": "allow"} if run_id else {}
            project = os.environ.get("WANDB_PROJECT", PROJECT)
            trackers.append(WandBTracker(project, name=run_name, notes=str(run_dir), **resumed))
    return trackers


def _recorded_run_id(recorded: dict, name: str) -> str | None:
    entry = recorded.get(name)
    run_id = entry.get("run_id") if isinstance(entry, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None


def start_trackers(accelerator, resumed_at: int | None, config: dict) -> dict:
    """Start the Accelerator's trackers (main process only) and return what manifest.json records of them.

    `resumed_at`: the step a resumed run continues from (None for a new run): TensorBoard then hides the
    events past it. `config` (the resolved config, flattened) is stored as the run's parameters in MLflow and
    W&B when the run is new; TensorBoard gets none (config.yaml is in the run folder beside it)."""
    if not accelerator.is_main_process or not accelerator.log_with:
        return {}
    for tracker in accelerator.log_with:
        if tracker.name == "tensorboard" and resumed_at is not None:
            tracker.init_kwargs["purge_step"] = resumed_at + 1  # SummaryWriter(purge_step=...)
    try:
        accelerator.init_trackers(PROJECT)
        if resumed_at is None:
            for tracker in accelerator.trackers:
                if tracker.name != "tensorboard":
                    tracker.store_init_configuration(config)
    except Exception as e:  # noqa: BLE001 - a tracker's own error, told in one line
        close_trackers(accelerator, "FAILED", quiet=True)
        names = ", ".join(t.name for t in accelerator.log_with)
        raise UserError(f"train.report_to: {names} could not start: {first_line(e, 200)}") from None
    return {tracker.name: _where(tracker) for tracker in accelerator.trackers}


def _where(tracker) -> dict:
    """The run a tracker writes to, as manifest.json records it."""
    if tracker.name == "tensorboard":
        return {"log_dir": TENSORBOARD_DIR}
    if tracker.name == "mlflow":
        import mlflow

        info = tracker.tracker.info
        return {"run_id": info.run_id, "experiment_id": info.experiment_id, "tracking_uri": mlflow.get_tracking_uri()}
    run = tracker.tracker  # wandb's Run
    return {"run_id": run.id, "project": run.project}


def send(accelerator, record: dict) -> None:
    """One metrics.jsonl record's numbers to the trackers, as `<split>/<name>` at the record's step
    (`train/loss`, `train/lr`, `eval/accuracy`)."""
    if not accelerator.trackers:
        return
    split, step = record["split"], record["step"]
    values = {
        f"{split}/{key}": value
        for key, value in record.items()
        if key not in ("split", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    accelerator.log(values, step=step)


def close_trackers(accelerator, status: str = "FINISHED", quiet: bool = False) -> None:
    """End every started tracker's run; `status` (FINISHED, KILLED, FAILED) is MLflow's run status. Not
    `Accelerator.end_training`, which also ends the process group that later child runs of a recipe need.
    `quiet`: after a failed start, where some trackers never started, their errors are not the one to tell."""
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "mlflow":
                import mlflow

                mlflow.end_run(status=status)
            else:
                tracker.finish()
        except Exception:  # noqa: BLE001
            if not quiet:
                raise
    accelerator.trackers = []


def flat_config(config: dict) -> dict:
    """{"train.lr": 5e-05, ...}: a nested config as trackers' parameters (lists as comma-separated text)."""
    return {key: ",".join(map(str, v)) if isinstance(v, list) else v for key, v in flat(config).items()}


def recorded_trackers(manifest: Path) -> dict:
    """manifest.json's "trackers" of a run folder ({} when there is none, or no manifest)."""
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("trackers", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}
