"""Experiment trackers for `--report-to`, through each library's own client API.

train_log.jsonl stays the record of a run; a tracker shows it in the tool its user already has: the run's
settings once, then each step's numbers and each validation's metrics at their global step. Each run is
named `run_name` (default: the output folder's name) and logs where that tool's user looks first:

    tensorboard  events in OUTPUT/tensorboard
    mlflow       MLFLOW_TRACKING_URI if set, else a SQLite store OUTPUT/mlflow.db (MLflow 3 refuses to open a
                 file store without MLFLOW_ALLOW_FILE_STORE); experiment MLFLOW_EXPERIMENT_NAME, else sbmoe
    trackio      trackio's local store (TRACKIO_DIR, else HF_HOME/trackio); project sbmoe
    wandb        offline unless WANDB_MODE says otherwise, under OUTPUT/wandb unless WANDB_DIR is set;
                 project WANDB_PROJECT, else sbmoe (`wandb sync OUTPUT/wandb/offline-run-*` uploads it)

Not accelerate's tracker classes: they log through accelerate's logger, which raises unless accelerate's
process state exists (an `Accelerator` or `PartialState`), and sbmoe runs its own loop and process group.
Starting that state only to log would also set distributed environment variables and pick a device.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from sbmoe.errors import SbmoeError

logger = logging.getLogger(__name__)

PROJECT = "sbmoe"  # the W&B and trackio project, the MLflow experiment
# The modules each tracker imports; SQLAlchemy and Alembic run MLflow's local store. Their pip packages have
# the same names, but for MLflow's (mlflow-skinny: the client without the server's dependencies).
MODULES = {
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
    "trackio": ("trackio",),
    "wandb": ("wandb",),
}
PIP_NAMES = {"mlflow": "mlflow-skinny"}


class Tracker(Protocol):
    """A run in one tracker, started with the run's settings logged."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def finish(self, failed: bool) -> None: ...


def check_trackers(names: Iterable[str]) -> None:
    """Raise SbmoeError, before training writes anything, when a module a tracker needs cannot be imported;
    the message names the pip install that brings it."""
    for name in names:
        missing = [
            PIP_NAMES.get(module, module) for module in MODULES.get(name, ()) if not _importable(module)
        ]
        if missing:
            raise SbmoeError(
                f"--report-to {name} needs {', '.join(missing)}: pip install 'sbmoe[tracking]' "
                f"(or pip install {' '.join(missing)})"
            )


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def start_trackers(
    names: Iterable[str], output: Path, settings: dict[str, Any], resume_step: int
) -> list[Tracker]:
    """A started run in each tracker `names` asks for ("none": no tracker). A tracker that fails to start
    ends those already started (marked failed) and raises."""
    run_name = settings.get("run_name") or output.resolve().name
    trackers: list[Tracker] = []
    try:
        for name in names:
            if name != "none":
                trackers.append(TRACKER_RUNS[name](output, run_name, settings, resume_step))
    except BaseException:
        finish_trackers(trackers, failed=True)
        raise
    return trackers


def log_to(trackers: Iterable[Tracker], values: dict[str, float], step: int) -> None:
    """Log `values` at the global step `step` to each tracker."""
    for tracker in trackers:
        tracker.log(values, step)


def finish_trackers(trackers: Iterable[Tracker], failed: bool) -> None:
    """End each tracker's run, marked failed after an exception where the library keeps a status. A tracker
    that cannot finish is logged, not raised: train_log.jsonl holds everything, and an exception that ended
    training matters more."""
    for tracker in trackers:
        try:
            tracker.finish(failed)
        except Exception as error:  # noqa: BLE001 - see the docstring
            logger.warning("Could not finish the %s run: %s", type(tracker).__name__, error)


def hyperparameters(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as every tracker takes them: a list becomes comma-separated text (TensorBoard's
    hparams take numbers, text and booleans only; None is left out there)."""
    return {
        key: ",".join(map(str, value)) if isinstance(value, list | tuple) else value
        for key, value in settings.items()
    }


class TensorBoardRun:
    """Events in OUTPUT/tensorboard, the settings as the run's hparams. A resumed run purges the events a
    killed run wrote past its checkpoint, as train_log.jsonl drops their lines."""

    def __init__(self, output: Path, run_name: str, settings: dict[str, Any], resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(output / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
        )
        self.writer.add_hparams(hyperparameters(settings), {}, run_name=".")  # "." : this run, not a new one

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, failed: bool) -> None:
        self.writer.close()


class MLflowRun:
    """A run of MLFLOW_TRACKING_URI, else of OUTPUT/mlflow.db (artifacts in OUTPUT/mlruns), through a client
    of its own: no global MLflow state, so one process may train several models (an experiment grid)."""

    def __init__(self, output: Path, run_name: str, settings: dict[str, Any], resume_step: int):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(uri or f"sqlite:///{(output / 'mlflow.db').resolve()}")
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(
                name, artifact_location=None if uri else (output / "mlruns").resolve().as_uri()
            )
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(key, str(value)) for key, value in hyperparameters(settings).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        """MLflow refuses '@' in a metric name (letters, digits, _ - . : / and spaces only): ndcg@10 ->
        ndcg_at_10."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key.replace("@", "_at_"), value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class TrackioRun:
    """A run of trackio's local store."""

    def __init__(self, output: Path, run_name: str, settings: dict[str, Any], resume_step: int):
        import trackio

        self.run = trackio.init(project=PROJECT, name=run_name, config=hyperparameters(settings))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, failed: bool) -> None:
        """trackio's own finish: `run.finish()` would leave the run current, for its exit hook to finish
        again."""
        import trackio

        trackio.finish()


class WandbRun:
    """An offline W&B run unless WANDB_MODE says otherwise, in the output folder unless WANDB_DIR is set."""

    def __init__(self, output: Path, run_name: str, settings: dict[str, Any], resume_step: int):
        import wandb

        options = {"mode": "offline"} if "WANDB_MODE" not in os.environ else {}
        if "WANDB_DIR" not in os.environ:
            options["dir"] = str(output)
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.run = wandb.init(project=project, name=run_name, config=hyperparameters(settings), **options)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


# The run class of each name in TrainingConfig.report_to.
TRACKER_RUNS: dict[str, Callable[[Path, str, dict[str, Any], int], Tracker]] = {
    "tensorboard": TensorBoardRun,
    "mlflow": MLflowRun,
    "trackio": TrackioRun,
    "wandb": WandbRun,
}
