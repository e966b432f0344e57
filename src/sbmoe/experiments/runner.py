"""Run a grid: every (base, training collection, system, number of experts, seed), trained and evaluated.

Resumable by construction: a run is finished when its folder holds done.json (written last); a folder
without it is removed and the run redone; results.jsonl is rebuilt from the finished runs after each one.
Interrupting loses at most the run in progress. See `sbmoe.experiments` for the folder layout.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbmoe.errors import SbmoeError
from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate, mode_folder
from sbmoe.evaluation.metrics import METRICS
from sbmoe.evaluation.views import VIEWS, view_metric
from sbmoe.experiments.config import (
    MEMORISING,
    SYSTEM_TRAINING,
    ExperimentConfig,
    init_from_label,
    model_label,
)
from sbmoe.io import atomic_write_text, provenance, write_json
from sbmoe.modeling import load_model
from sbmoe.progress import progress_bar
from sbmoe.training.config import TrainingConfig
from sbmoe.training.data import collection_names
from sbmoe.training.trainer import train

logger = logging.getLogger(__name__)

VIEW_METRICS = tuple(view_metric(view, metric) for view in VIEWS for metric in METRICS)
MODEL_FILES = ("model.safetensors", "best", "checkpoints")  # removed after evaluation unless models are kept


@dataclass(frozen=True)
class Run:
    run_id: str
    label: str
    system: str
    base: str
    train_dataset: str | None
    num_experts: int | None
    seed: int | None
    training: dict[str, Any]
    init_from_run: str | None = None  # the run whose model `init_from: "@label"` upcycles
    model_run: str | None = None  # nudge, prior: the run whose model they adjust (`model: "@label"`)


def _run_id(dataset: str, base_tag: str, label: str, experts: int | None, seed: int) -> str:
    """e.g. "scifact/minilm-l6/sbmoe-learned-n6/seed1", also its folder ("a+b" is a fine folder name)."""
    suffix = "" if experts is None else f"-n{experts}"
    return f"{dataset}/{base_tag}/{label}{suffix}/seed{seed}"


def plan_runs(config: ExperimentConfig) -> list[Run]:
    """Every run of the grid, in the order they are executed."""
    runs = []
    for base in config.bases:
        base_tag = Path(base.rstrip("/")).name
        for spec in config.systems:
            if spec.system == "zero-shot":
                runs.append(Run(f"zero-shot/{base_tag}", spec.label, spec.system, base, None, None, None, {}))
        for dataset in config.train_datasets:
            for spec in config.systems:
                if spec.system == "zero-shot":
                    continue
                source = init_from_label(spec.training)  # a system with 1 expert (checked by the config)
                adjusted = model_label(spec)  # nudge, prior: the system they adjust (or None: the base)
                for experts in spec.num_experts:
                    for seed in config.seeds:
                        run_id = _run_id(dataset, base_tag, spec.label, experts, seed)
                        if spec.system in MEMORISING:
                            model_run = (
                                _run_id(dataset, base_tag, adjusted, experts, seed) if adjusted else None
                            )
                            runs.append(
                                Run(run_id, spec.label, spec.system, base, dataset, experts, seed,
                                    spec.training, model_run=model_run)
                            )  # fmt: skip
                            continue
                        training = {**config.training, **spec.training}
                        source_run = _run_id(dataset, base_tag, source, 1, seed) if source else None
                        runs.append(
                            Run(run_id, spec.label, spec.system, base, dataset, experts, seed, training,
                                source_run)
                        )  # fmt: skip
    return runs


def run_experiment(
    config: ExperimentConfig,
    output_dir: str | Path,
    progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Execute (or resume) the grid in `output_dir`; returns the lines of results.jsonl.

    seeds: run only the runs of these seeds of the grid now (the untrained base's run included), so that a
    long grid can be completed seed by seed in separate sessions; results.jsonl holds every finished run.
    """
    output = Path(output_dir)
    if seeds is not None and not set(seeds) <= set(config.seeds):
        missing = sorted(set(seeds) - set(config.seeds))
        raise SbmoeError(f"seeds {missing} are not in the grid's {config.seeds}")
    _check_or_write_experiment(output, config)
    runs = plan_runs(config)
    chosen = [run for run in runs if seeds is None or run.seed is None or run.seed in seeds]
    finished = sum((output / "runs" / run.run_id / "done.json").is_file() for run in chosen)
    logger.info(
        "Experiment %s: %d runs%s, %d already finished", config.name, len(chosen),
        "" if seeds is None else f" of {len(runs)} (seeds {list(seeds)})", finished,
    )  # fmt: skip
    bar = progress_bar(chosen, desc=f"Experiment {config.name}", unit="run", progress=progress)
    for run in bar:
        folder = output / "runs" / run.run_id
        if (folder / "done.json").is_file():
            continue
        bar.set_postfix_str(run.run_id)
        if folder.exists():
            logger.warning("Redoing %s: it did not finish", run.run_id)
            shutil.rmtree(folder)
        _execute(run, config, folder, output, progress)
        _write_results(output, runs)
    bar.close()
    return _write_results(output, runs)


def _check_or_write_experiment(output: Path, config: ExperimentConfig) -> None:
    """A folder holds one experiment: resuming with a different grid is refused."""
    record = output / "experiment.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))["config"]
        saved = {"dtype": "float32", **saved}  # grids written before the field ran in float32
        if saved != json.loads(json.dumps(config.to_dict())):
            raise SbmoeError(
                f"{output} holds experiment {saved.get('name')!r} with a different configuration; "
                "use another --output-dir (finished runs are kept only for the same grid)"
            )
        return
    if output.exists() and any(output.iterdir()):
        raise SbmoeError(f"{output} already exists, is not empty and holds no experiment.json")
    write_json(record, {"config": config.to_dict(), "provenance": provenance()})


def _execute(run: Run, config: ExperimentConfig, folder: Path, output: Path, progress: bool = False) -> None:
    """Train (unless zero-shot), evaluate on every collection of the run, record, mark done. Progress bars
    of the long steps (encoding a collection the first time) follow `progress`."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    memorising: dict[str, Any] = {}  # nudge or prior: the evaluation settings of the in-domain collections
    train_seconds = 0.0
    if run.system == "zero-shot":
        model_path = run.base
    elif run.system in MEMORISING:
        model_path = str(output / "runs" / run.model_run / "model") if run.model_run else run.base
        memorising = {
            run.system: config.train_split,
            "nudge_variant": run.training.get("nudge_variant", "n"),
            "memorisation_seed": run.seed,
            # fitted on the training queries the grid's trained systems keep
            "exclude_positives_of": config.training.get("exclude_positives_of"),
        }
    else:
        model_path = str(folder / "model")
        settings = {
            **run.training,
            **SYSTEM_TRAINING[run.system],
            "base": run.base,
            "dataset": run.train_dataset,
            "data_dir": config.data_dir,
            "output_dir": model_path,
            "train_split": config.train_split,
            "seed": run.seed,
            "num_experts": run.num_experts or 1,
            "dtype": config.dtype,
            "run_name": run.run_id,  # in experiment trackers (report_to): the run, not its folder "model"
        }
        if run.init_from_run is not None:  # "@label": the model of that system's run, same seed
            settings["init_from"] = str(output / "runs" / run.init_from_run / "model")
        settings.setdefault("progress", False)
        try:
            train(TrainingConfig(**settings))
        except ValueError as error:
            raise SbmoeError(f"run {run.run_id}: {error}") from error
        train_seconds = time.perf_counter() - started
    in_domain = _in_domain(run, config)
    loaded = load_model(model_path)
    modes = _modes(run, config, loaded[0])
    lines = []
    for collection in dict.fromkeys([*in_domain, *config.zero_shot_datasets]):
        # In-domain, every system is also scored against what the training split judged (the views of
        # sbmoe.evaluation.views), the untrained base included, so that their rows compare.
        seen = config.train_split if collection in in_domain else "none"
        settings = EvaluateSettings(
            model=model_path,
            dataset=collection,
            split=config.test_split,
            data_dir=config.data_dir,
            output_dir=str(folder / "eval" / collection),
            top_k=config.top_k,
            modes=modes,
            per_mode_folders=True,
            progress=progress,
            dtype=config.dtype,
            seen_split=seen,
            record_in_card=run.system not in MEMORISING,  # the card describes the adjusted model's own
            **(memorising if collection in in_domain else {}),
        )
        summaries = evaluate(settings, loaded=loaded)
        for summary in summaries:
            lines.append(_result_line(run, config, collection, summary, folder, output))
    write_json(folder / "results.json", lines)
    if not _keeps_model(run, config):
        for name in MODEL_FILES:
            path = folder / "model" / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    write_json(
        folder / "done.json",
        {
            "run_id": run.run_id,
            "seconds": round(time.perf_counter() - started, 1),
            "train_seconds": round(train_seconds, 1),
        },
    )
    logger.info("Finished %s in %.0f s", run.run_id, time.perf_counter() - started)


def _modes(run: Run, config: ExperimentConfig, model) -> tuple[str, ...] | None:
    """Routing modes to evaluate: those of the grid's that give this block distinct results (the block
    decides: RANDOM-GATE routes at random, one expert has a single mode); no block, no modes."""
    if model.moe is None:
        return None
    return model.moe.evaluation_modes(config.modes)


def _in_domain(run: Run, config: ExperimentConfig) -> list[str]:
    """The collections a run is tested in-domain on: those it trained on (each of "a+b"); for the untrained
    base, every training collection of the grid."""
    entries = [run.train_dataset] if run.train_dataset is not None else config.train_datasets
    return list(dict.fromkeys(name for entry in entries for name in collection_names(entry)))


def _keeps_model(run: Run, config: ExperimentConfig) -> bool:
    """Models asked for by keep_models, and those another system upcycles from (init_from "@label") or
    adjusts (nudge, prior: model "@label")."""
    if any(run.label in (init_from_label(spec.training), model_label(spec)) for spec in config.systems):
        return True
    keep = config.keep_models
    return keep if isinstance(keep, bool) else run.label in keep


def _result_line(
    run: Run, config, collection: str, summary: dict, folder: Path, output: Path
) -> dict[str, Any]:
    mode = summary.get("mode")
    metrics_file = folder / "eval" / collection / mode_folder(mode) / "metrics.json"
    in_domain = collection in _in_domain(run, config)
    return {
        "run_id": run.run_id,
        "system": run.label,
        "base": run.base,
        "train_dataset": run.train_dataset,
        "num_experts": run.num_experts,
        "seed": run.seed,
        "eval_dataset": collection,
        "split": config.test_split,
        "setting": "in-domain" if in_domain else "zero-shot",
        "mode": mode,
        "metrics": {name: summary[name] for name in (*METRICS, *VIEW_METRICS) if name in summary},
        "metrics_file": str(metrics_file.relative_to(output)),
    }


def _write_results(output: Path, runs: list[Run]) -> list[dict[str, Any]]:
    """results.jsonl from every finished run, in grid order (rewritten atomically)."""
    lines = []
    for run in runs:
        folder = output / "runs" / run.run_id
        if (folder / "done.json").is_file():
            lines.extend(json.loads((folder / "results.json").read_text(encoding="utf-8")))
    atomic_write_text(output / "results.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return lines
