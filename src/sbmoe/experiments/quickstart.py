"""`sbmoe quickstart`: the paper's comparison on one collection, on a CPU, in minutes.

The base encoder stays frozen: its pooled vectors are computed once and every system trains only its
block on them with the default frozen recipe (seconds per run on a CPU). Systems: the untrained base
(ZERO-SHOT); the two memorisation baselines, which train nothing (PRIOR: a score bonus for every training
positive; NUDGE: the training positives' vectors moved towards their training queries); a single-expert
ADAPTER (the paper's control, and the baseline of the significance tests); the gated adapter (one expert
scaled by a learned per-text gate); SB-MoE in the paper's two variants; and cluster routing, the best routed
design of the frozen SciFact grid on validation (docs/results/frozen-scifact), evaluated with TOP-1 and ALL
routing. In-domain every system is also scored on the documents no training query judged (the
unseen-documents view). Then the report, and an expert analysis of the cluster-routed model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from sbmoe.analysis.analyze import AnalyzeSettings, analyze
from sbmoe.experiments.config import build_experiment_config
from sbmoe.experiments.render import write_report
from sbmoe.experiments.runner import plan_runs, run_experiment
from sbmoe.experiments.tables import build_report

logger = logging.getLogger(__name__)

ANALYZED = "cluster"  # the system whose model is kept and analysed


def quickstart_config(
    base: str,
    dataset: str,
    data_dir: str | None,
    num_experts: int,
    seed: int,
    batch_size: int,
    dtype: str = "auto",
) -> dict[str, Any]:
    return {
        "name": "quickstart",
        "bases": [base],
        "train_datasets": [dataset],
        "systems": {
            "zero-shot": {},
            "prior": {},
            "nudge": {},
            "adapter": {},
            "gated-adapter": {},
            "sbmoe-faithful": {"num_experts": [num_experts]},
            "sbmoe-learned": {"num_experts": [num_experts]},
            ANALYZED: {"system": "sbmoe-learned", "router": "cluster", "num_experts": [num_experts]},
        },
        "modes": ["top1", "all"],
        "seeds": [seed],
        "keep_models": [ANALYZED],
        # the default frozen recipe (10 epochs, the last kept); validation only monitors, after the last epoch
        "training": {"freeze_encoder": True, "batch_size": batch_size, "validate_every": 10},
        "data_dir": data_dir,
        "dtype": dtype,
    }


def run_quickstart(
    output_dir: str | Path,
    base: str = "minilm-l6",
    dataset: str = "scifact",
    data_dir: str | None = None,
    num_experts: int = 6,
    seed: int = 42,
    batch_size: int = 32,
    progress: bool = True,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Run the grid, write the report and the analysis; returns their paths and the report.

    dtype: the encoder's precision (auto: bfloat16 where the hardware has it, else float32)."""
    output = Path(output_dir)
    config = build_experiment_config(
        quickstart_config(base, dataset, data_dir, num_experts, seed, batch_size, dtype),
        where="quickstart",
        data_dir=data_dir,
    )
    logger.info(
        "Frozen encoder: the base's pooled vectors are computed once; each system trains only its block"
    )
    tick = time.perf_counter()
    run_experiment(config, output / "experiment", progress=progress)
    grid_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    report = build_report(output / "experiment")
    paths = write_report(report, output / "report")
    report_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    analyzed = next(run for run in plan_runs(config) if run.label == ANALYZED)
    analysis = analyze(
        AnalyzeSettings(
            model=str(output / "experiment" / "runs" / analyzed.run_id / "model"),
            dataset=dataset,
            data_dir=data_dir,
            output_dir=str(output / "analysis"),
            progress=progress,
            dtype=dtype,
        )
    )
    seconds = {
        **grid_time_split(output / "experiment"),
        "report": report_seconds,
        "analysis": time.perf_counter() - tick,
    }
    seconds["grid (this call)"] = grid_seconds
    return {"report": report, "report_paths": paths, "analysis": analysis, "seconds": seconds}


def grid_time_split(folder: Path) -> dict[str, float]:
    """Seconds of the finished runs of a grid folder: encoding (texts pooled by the encoder, or read from the
    embedding cache), training, and evaluation (the rest: heads, NUDGE and prior fits, search, metrics)."""
    done = [json.loads(path.read_text(encoding="utf-8")) for path in folder.glob("runs/**/done.json")]
    encoding = 0.0
    for evaluation in folder.glob("runs/**/eval/*"):
        first_mode = next(
            iter(sorted(evaluation.glob("*/metrics.json"))), None
        )  # the modes share the pooling
        if first_mode is not None:
            timings = json.loads(first_mode.read_text(encoding="utf-8"))["seconds"]
            encoding += timings["corpus_encoding"] + timings["query_encoding"]
    training = sum(run.get("train_seconds", 0.0) for run in done)
    total = sum(run["seconds"] for run in done)
    return {"encoding": encoding, "training": training, "evaluation": max(0.0, total - training - encoding)}
