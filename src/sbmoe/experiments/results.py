"""Reading an experiment folder: the lines of results.jsonl, the metrics files they name (and their
per-query values), the name and command in experiment.json, and the system row (label, number of experts,
routing mode) each line belongs to.

The line format is described in `sbmoe.experiments`. A line's `system` is the grid's label for a block
design: one of the systems (`finetune`, `sbmoe-learned`, ...) or any label the grid gave one (`cluster`,
`learned-st`, ...). Known systems get the paper's names and order; other labels follow them, named by
themselves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbmoe.errors import DataError, SbmoeError

logger = logging.getLogger(__name__)

RESULT_KEYS = (
    "run_id", "system", "base", "train_dataset", "num_experts", "seed", "eval_dataset", "setting", "mode",
    "metrics", "metrics_file",
)  # fmt: skip
SYSTEM_ORDER = (
    "zero-shot", "prior", "nudge", "finetune", "adapter", "gated-adapter", "random-gate", "sbmoe-faithful",
    "sbmoe-learned",
)  # fmt: skip
SYSTEM_LABELS = {
    "zero-shot": "ZERO-SHOT",
    "prior": "PRIOR",
    "nudge": "NUDGE",
    "finetune": "FINE-TUNED",
    "adapter": "ADAPTER",
    "gated-adapter": "GATED ADAPTER",
    "random-gate": "RANDOM-GATE",
    "sbmoe-faithful": "SB-MoE faithful",
    "sbmoe-learned": "SB-MoE learned",
}


def system_label(system: str) -> str:
    """The paper's name of a known system ("sbmoe-learned" -> "SB-MoE learned"); any other label itself."""
    return SYSTEM_LABELS.get(system, system)


def mode_label(mode: str) -> str:
    """ "top1" -> "TOP-1", "topk:3" -> "TOP-3", "all" -> "ALL", "random" -> "RANDOM"."""
    if mode == "top1":
        return "TOP-1"
    if mode.startswith("topk:"):
        return "TOP-" + mode.split(":", 1)[1]
    return mode.upper()


def _mode_rank(mode: str | None) -> tuple[int, int]:
    if mode is None:
        return (0, 0)
    if mode == "top1":
        return (1, 1)
    if mode.startswith("topk:"):
        k = mode.split(":", 1)[1]
        return (1, int(k) if k.isdigit() else 0)
    return {"all": (2, 0), "random": (3, 0)}.get(mode, (4, 0))


@dataclass(frozen=True)
class SystemRow:
    """One row of a table: a system at one number of experts, evaluated with one routing mode."""

    system: str
    num_experts: int | None
    mode: str | None

    @property
    def label(self) -> str:
        """The paper's name: "FINE-TUNED", "SB-MoE learned N=6 TOP-1", "cluster N=6 TOP-1"."""
        parts = [system_label(self.system)]
        if self.system in ("adapter", "gated-adapter"):  # one expert: N and TOP-1 say nothing
            if self.mode not in (None, "top1"):
                parts.append(mode_label(self.mode))
            return " ".join(parts)
        if self.num_experts is not None:
            parts.append(f"N={self.num_experts}")
        if self.mode is not None:
            parts.append(mode_label(self.mode))
        return " ".join(parts)

    @property
    def line_label(self) -> str:
        """The label of this row's line in the experts figure (without N)."""
        return SystemRow(self.system, None, self.mode).label

    def sort_key(self) -> tuple:
        """Known systems in the paper's order, then other labels alphabetically; then N, then mode."""
        known = self.system in SYSTEM_ORDER
        return (
            SYSTEM_ORDER.index(self.system) if known else len(SYSTEM_ORDER),
            "" if known else self.system,
            self.num_experts if self.num_experts is not None else 0,
            _mode_rank(self.mode),
            self.mode or "",
        )


def row_of(record: dict) -> SystemRow:
    """The system row of a results.jsonl line."""
    return SystemRow(record["system"], record["num_experts"], record["mode"])


def load_results(folder: Path) -> list[dict]:
    """The lines of DIR/results.jsonl, each checked for the keys of the documented format.

    Raises SbmoeError when the file is missing, DataError (an SbmoeError naming file and line) for a
    line that is not a JSON object with those keys.
    """
    path = Path(folder) / "results.jsonl"
    if not path.is_file():
        raise SbmoeError(f"{path} not found: is {folder} an experiment folder written by `sbmoe experiment`?")
    results = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(path, f"not valid JSON ({error.msg})", line=number) from error
            if not isinstance(record, dict):
                raise DataError(path, "expected a JSON object", line=number)
            missing = [key for key in RESULT_KEYS if key not in record]
            if missing:
                raise DataError(path, f"missing keys {missing}", line=number)
            metrics = record["metrics"]
            if not isinstance(metrics, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
            ):
                raise DataError(path, "metrics must map metric names to numbers", line=number)
            if record["num_experts"] is not None and not isinstance(record["num_experts"], int):
                problem = f"num_experts must be an integer or null, got {record['num_experts']!r}"
                raise DataError(path, problem, line=number)
            results.append(record)
    return results


def deduplicate_results(results: list[dict]) -> list[dict]:
    """Keep the last line of each (run, collection, split, mode): a redone run appends its result again."""
    latest: dict[tuple, dict] = {}
    for record in results:
        key = (record["run_id"], record["eval_dataset"], record.get("split"), record["mode"])
        if key in latest:
            logger.warning("results.jsonl holds %s more than once; the last line is used", key)
        latest[key] = record
    return list(latest.values())


class MetricsFiles:
    """The metrics.json files named by results.jsonl lines (paths relative to the experiment folder), each
    read once."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._files: dict[str, dict[str, Any]] = {}

    def path(self, metrics_file: str) -> Path:
        return self.folder / metrics_file

    def get(self, metrics_file: str) -> dict[str, Any]:
        """The file's JSON object. Raises SbmoeError when it is missing, DataError when it is not JSON."""
        if metrics_file not in self._files:
            path = self.path(metrics_file)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError as error:
                raise SbmoeError(f"{path}: metrics file named in results.jsonl not found") from error
            except json.JSONDecodeError as error:
                raise DataError(path, f"not valid JSON ({error.msg})") from error
            if not isinstance(data, dict):
                raise DataError(path, "expected a JSON object")
            self._files[metrics_file] = data
        return self._files[metrics_file]

    def per_query(self, metrics_file: str, metric: str) -> dict[str, float]:
        """query id -> value of `metric`, from the file's "per_query" (the input of significance tests).
        Raises DataError when the file has no per-query values, or none of `metric`."""
        per_query = self.get(metrics_file).get("per_query")
        if not isinstance(per_query, dict):
            raise DataError(self.path(metrics_file), "no per_query values: significance tests need them")
        values = per_query.get(metric)
        if not isinstance(values, dict):
            raise DataError(self.path(metrics_file), f"per_query has no {metric!r} values")
        return values


def per_query_mean(records: Sequence[dict], metric: str, files: MetricsFiles) -> dict[str, float]:
    """query id -> `metric` averaged over the records (one per seed); the queries present in every seed."""
    tables = [files.per_query(r["metrics_file"], metric) for r in records]
    common = set(tables[0]).intersection(*tables[1:])
    if any(len(t) != len(common) for t in tables):
        logger.warning(
            "the seeds of %s differ in their queries; using the %d shared", records[0]["run_id"], len(common)
        )
    return {qid: sum(float(t[qid]) for t in tables) / len(tables) for qid in common}


def read_experiment(folder: Path) -> tuple[str | None, str | None]:
    """(experiment name, command) from DIR/experiment.json; (None, None) when it is absent or unreadable."""
    path = Path(folder) / "experiment.json"
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("%s is unreadable (%s); the report omits how the experiment was run", path, error)
        return None, None
    if not isinstance(data, dict):
        return None, None
    config = data.get("config")
    provenance = data.get("provenance")
    name = config.get("name") if isinstance(config, dict) else data.get("name")
    command = provenance.get("command") if isinstance(provenance, dict) else None
    return (str(name) if name is not None else None), (str(command) if command is not None else None)


__all__ = [
    "RESULT_KEYS", "SYSTEM_LABELS", "SYSTEM_ORDER", "MetricsFiles", "SystemRow", "deduplicate_results",
    "load_results", "mode_label", "per_query_mean", "read_experiment", "row_of", "system_label",
]  # fmt: skip
