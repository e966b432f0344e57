"""The training log: DIR/train_log.jsonl, one JSON line per step and per validation, and the experiment
trackers `report_to` names (`sbmoe.training.tracking`). Written by the main process only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from sbmoe.io import atomic_write_text
from sbmoe.training.checkpoint import TrainerState
from sbmoe.training.tracking import Tracker, finish_trackers, log_to, start_trackers


class TrainingLog:
    """train_log.jsonl (main process only), and the trackers `report_to` names; a context manager that ends
    the trackers' runs on the way out, marked failed after an exception.

    A resumed run first drops the lines past the checkpoint it continues from (`resume_step`), so every
    step is logged once. train_log.jsonl is the record: a line is written before any tracker sees it. The
    file stays open for the run (a frozen-encoder run logs a step every few milliseconds), and each line
    is flushed as it is written, so a killed run's log holds every step before its last checkpoint.
    """

    def __init__(
        self,
        path: Path,
        enabled: bool,
        resume_step: int,
        report_to: tuple[str, ...] = ("none",),
        settings: dict[str, Any] | None = None,
    ):
        self.path, self.enabled = path, enabled
        self.trackers: list[Tracker] = []
        self._file: TextIO | None = None
        if not enabled:
            return
        if path.exists():  # drop lines past the checkpoint a resumed run continues from
            kept = [
                line for line in path.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line).get("global_step", 0) <= resume_step
            ]  # fmt: skip
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        self.trackers = start_trackers(report_to, path.parent, settings or {}, resume_step)
        self._file = open(path, "a", encoding="utf-8")  # closed by `close`

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        self.close(failed=kind is not None)

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def step(
        self,
        state: TrainerState,
        parts: dict[str, float],
        learning_rates: dict[str, float],
        routing: dict[str, torch.Tensor],
        pairs_per_second: float,
    ) -> None:
        """One optimiser step: the loss parts, each parameter group's learning rate, the routing statistics
        (`counts` per top expert and mean `entropy`, empty without a block) and the throughput."""
        if not self.enabled:
            return
        record = {
            "type": "step",
            "epoch": state.epoch + 1,
            "global_step": state.global_step,
            **{f"loss/{name}": value for name, value in parts.items()},
            **{f"lr/{name}": lr for name, lr in learning_rates.items()},
            "pairs_per_second": round(pairs_per_second, 2),
            "time": round(time.time(), 3),
        }
        if routing:
            counts = routing["counts"]
            record["expert_share"] = [round(share, 4) for share in (counts / counts.sum()).tolist()]
            record["routing_entropy"] = round(float(routing["entropy"]), 4)
        self._write(record)
        log_to(self.trackers, step_scalars(record), state.global_step)

    def validation(self, state: TrainerState, metrics: dict[str, float], improved: bool) -> None:
        if not self.enabled:
            return
        self._write({"type": "validation", "epoch": state.epoch + 1, "global_step": state.global_step,
                     **metrics, "improved": improved})  # fmt: skip
        log_to(
            self.trackers, {f"validation/{key}": value for key, value in metrics.items()}, state.global_step
        )

    def close(self, failed: bool = False) -> None:
        """End the trackers' runs and close the file (once)."""
        finish_trackers(self.trackers, failed)
        self.trackers = []
        if self._file is not None:
            self._file.close()
            self._file = None


def step_scalars(record: dict[str, Any]) -> dict[str, float]:
    """What a tracker plots of a step line: its numbers but the step itself and the wall-clock time (trackers
    keep both), and each expert's share of texts as expert_share/<expert>."""
    scalars = {
        key: value for key, value in record.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
        and key not in ("global_step", "time")
    }  # fmt: skip
    for expert, share in enumerate(record.get("expert_share", [])):
        scalars[f"expert_share/{expert}"] = share
    return scalars
