"""`--report-to`: each tracker gets the run's settings, the step losses and the validation metrics of
train_log.jsonl, offline and read back with the tracker's own reader; a missing package stops the run
before it writes anything; the deprecated `tensorboard` setting still works."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import train_args
from tiny import make_synthetic_beir

from sbmoe.commands import build_parser, main
from sbmoe.commands.train import training_config
from sbmoe.errors import SbmoeError
from sbmoe.training.config import TRACKERS, TrainingConfig, resolve_config
from sbmoe.training.tracking import MODULES, TRACKER_RUNS

REQUIRED = {"base": "b", "dataset": "d", "output_dir": "o"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_beir(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """Every tracker offline and writing under tmp_path; returns trackio's store."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    store = tmp_path / "trackio"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(store))  # read when trackio is imported
    if "trackio.sqlite_storage" in sys.modules:  # imported already: point its store there too
        monkeypatch.setattr(sys.modules["trackio.sqlite_storage"], "TRACKIO_DIR", store)
    return store


def train_with(tiny_encoder, synthetic, output: Path, *extra: str) -> None:
    args = train_args(tiny_encoder, synthetic, output, "--freeze-encoder", "--epochs", "2", *extra)
    assert main(args) == 0


def jsonl_series(output: Path) -> dict[str, dict[int, float]]:
    """train_log.jsonl's step losses and validation nDCG@10, by global step."""
    lines = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return {
        "loss/total": {line["global_step"]: line["loss/total"] for line in lines if line["type"] == "step"},
        "validation/ndcg@10": {
            line["global_step"]: line["ndcg@10"] for line in lines if line["type"] == "validation"
        },
    }


# ------------------------------------------------------------- each tracker's own reader: (series, run name)


def read_tensorboard(output: Path, store: Path) -> tuple[dict[str, dict[int, float]], str | None]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    series = {
        key: {event.step: event.value for event in events.Scalars(key)} for key in events.Tags()["scalars"]
    }
    return series, None  # TensorBoard's run is the folder


def read_mlflow(output: Path, store: Path) -> tuple[dict[str, dict[int, float]], str | None]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    (experiment,) = client.search_experiments(filter_string="name = 'sbmoe'")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["batch_size"] == "4"
    series = {
        key.replace("_at_", "@"): {
            metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, key)
        }
        for key in run.data.metrics
    }
    return series, run.info.run_name


def read_trackio(output: Path, store: Path) -> tuple[dict[str, dict[int, float]], str | None]:
    from trackio.sqlite_storage import SQLiteStorage

    assert (store / "sbmoe.db").is_file()
    (name,) = SQLiteStorage.get_runs("sbmoe")
    assert SQLiteStorage.get_run_config("sbmoe", name)["batch_size"] == 4
    series: dict[str, dict[int, float]] = {}
    for row in SQLiteStorage.get_logs("sbmoe", name):
        for key, value in row.items():
            if key not in ("step", "timestamp"):
                series.setdefault(key, {})[row["step"]] = value
    return series, name


def read_wandb(output: Path, store: Path) -> tuple[dict[str, dict[int, float]], str | None]:
    """The offline run's .wandb log, read by wandb's own `wandb leet inspect`."""
    (folder,) = (output / "wandb").glob("offline-run-*")
    inspect = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)]
    records = [
        json.loads(line)
        for line in subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.splitlines()
    ]
    (run,) = [record["run"] for record in records if record["type"] == "run"]
    assert run["project"] == "sbmoe" and run["config"]["update"]["batch_size"] == 4
    series: dict[str, dict[int, float]] = {}
    for record in records:
        if record["type"] == "history":
            step = record["history"]["step"]["num"]
            for key, value in record["history"]["item"].items():
                series.setdefault(key, {})[int(step)] = value
    (exit_record,) = [record["exit"] for record in records if record["type"] == "exit"]
    assert exit_record.get("exit_code", 0) == 0
    return series, run["display_name"]


READERS = {
    "tensorboard": read_tensorboard,
    "mlflow": read_mlflow,
    "trackio": read_trackio,
    "wandb": read_wandb,
}


def test_every_tracker_has_a_reader_and_its_modules():
    assert set(READERS) == set(MODULES) == set(TRACKER_RUNS) == set(TRACKERS)


@pytest.mark.parametrize("tracker", TRACKERS)
def test_tracker_gets_the_logged_losses_and_validation(tracker, tiny_encoder, synthetic, tmp_path, offline):
    for module in MODULES[tracker]:
        pytest.importorskip(module, reason=f"{module} is not installed (pip install 'sbmoe[tracking]')")
    output = tmp_path / "my-run"
    train_with(tiny_encoder, synthetic, output, "--report-to", tracker)
    series, run_name = READERS[tracker](output, offline)
    expected = jsonl_series(output)
    assert len(expected["loss/total"]) == 16 and len(expected["validation/ndcg@10"]) == 2  # 8 steps an epoch
    for key, values in expected.items():
        assert series[key] == pytest.approx(values, rel=1e-6), key  # TensorBoard keeps float32
    assert run_name in (None, "my-run")


def test_several_trackers_from_a_list_and_repeated_flags(tmp_path):
    parser = build_parser(["train"])
    base = ["train", "--base", "b", "--dataset", "d", "--output-dir", "o"]
    args = parser.parse_args([*base, "--report-to", "wandb, mlflow", "--report-to", "tensorboard,wandb"])
    assert training_config(args).report_to == ("wandb", "mlflow", "tensorboard")
    assert training_config(parser.parse_args(base)).report_to == ("none",)
    config = tmp_path / "train.yaml"
    config.write_text("base: b\ndataset: d\noutput_dir: o\nreport_to: [trackio, wandb]\n")
    assert training_config(parser.parse_args(["train", "--config", str(config)])).report_to == (
        "trackio",
        "wandb",
    )
    with pytest.raises(
        ValueError, match=r"report_to must be one of \['none', 'tensorboard', .*\], got 'neptune'"
    ):
        TrainingConfig(**REQUIRED, report_to="wandb,neptune")
    with pytest.raises(ValueError, match="report_to none cannot be combined with trackers"):
        TrainingConfig(**REQUIRED, report_to=["none", "wandb"])


def test_deprecated_tensorboard_setting_adds_the_tracker(caplog):
    with caplog.at_level(logging.WARNING):
        config = resolve_config({**REQUIRED, "tensorboard": True, "report_to": "mlflow"}, {})
    assert config.report_to == ("mlflow", "tensorboard")
    assert "tensorboard is now a name in report_to" in caplog.text and "(deprecated)" in caplog.text
    assert resolve_config({**REQUIRED, "tensorboard": False}, {}).report_to == ("none",)
    assert resolve_config(REQUIRED, {"tensorboard": True}).report_to == ("tensorboard",)
    assert resolve_config({**REQUIRED, "report_to": "none"}, {"tensorboard": True}).report_to == (
        "tensorboard",
    )
    with pytest.raises(SbmoeError, match="tensorboard true contradicts report_to none"):  # in one place
        resolve_config({**REQUIRED, "report_to": "none", "tensorboard": True}, {})
    with pytest.raises(SbmoeError, match="tensorboard false contradicts report_to tensorboard"):
        resolve_config({**REQUIRED, "tensorboard": False, "report_to": "tensorboard"}, {})


def test_deprecated_tensorboard_flag_still_writes_events(tiny_encoder, synthetic, tmp_path, offline, caplog):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'sbmoe[tracking]')")
    output = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        train_with(tiny_encoder, synthetic, output, "--tensorboard")
    assert "tensorboard is now a name in report_to" in caplog.text
    assert json.loads((output / "training_config.json").read_text())["config"]["report_to"] == ["tensorboard"]
    series, _ = read_tensorboard(output, offline)
    assert series["loss/total"] == pytest.approx(jsonl_series(output)["loss/total"], rel=1e-6)


def test_missing_tracker_package_exits_2_naming_the_install(
    tiny_encoder, synthetic, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as when it is not installed
    output = tmp_path / "run"
    assert main(train_args(tiny_encoder, synthetic, output, "--report-to", "tensorboard,wandb")) == 2
    err = capsys.readouterr().err
    assert "--report-to wandb needs wandb: pip install 'sbmoe[tracking]'" in err, err
    assert not output.exists()


def test_a_crash_ends_the_tracker_run_as_failed(tiny_encoder, synthetic, tmp_path, offline, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'sbmoe[tracking]')")
    from mlflow.tracking import MlflowClient

    def crash(*args, **kwargs):
        raise RuntimeError("validation crashed")

    monkeypatch.setattr("sbmoe.training.trainer.validate", crash)
    output = tmp_path / "run"
    with pytest.raises(RuntimeError, match="validation crashed"):
        main(
            train_args(
                tiny_encoder, synthetic, output, "--freeze-encoder", "--epochs", "1", "--report-to", "mlflow"
            )
        )
    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sbmoe").experiment_id])
    assert run.info.status == "FAILED"
    logged = client.get_metric_history(run.info.run_id, "loss/total")
    assert {metric.step: metric.value for metric in logged} == jsonl_series(output)["loss/total"]


def test_run_name_names_the_run_in_the_tracker(tiny_encoder, synthetic, tmp_path, offline):
    """--run-name (the grid passes each run's id) replaces the output folder's name ("model" in a grid)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'sbmoe[tracking]')")
    output = tmp_path / "model"
    train_with(
        tiny_encoder, synthetic, output, "--report-to", "mlflow", "--run-name", "scifact/adapter-n1/seed1"
    )
    _, run_name = read_mlflow(output, offline)
    assert run_name == "scifact/adapter-n1/seed1"
