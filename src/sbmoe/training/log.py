"""The training log: DIR/train_log.jsonl, one JSON line per step and per validation, and TensorBoard when
asked for. Written by the main process only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from sbmoe.errors import SbmoeError
from sbmoe.io import atomic_write_text
from sbmoe.training.checkpoint import TrainerState


class TrainingLog:
    """train_log.jsonl (main process only), and TensorBoard when asked for.

    A resumed run first drops the lines past the checkpoint it continues from (`resume_step`), so every
    step is logged once.
    """

    def __init__(self, path: Path, enabled: bool, resume_step: int, tensorboard: bool):
        self.path, self.enabled = path, enabled
        self.writer = None
        if not enabled:
            return
        if path.exists():  # drop lines past the checkpoint a resumed run continues from
            kept = [
                line for line in path.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line).get("global_step", 0) <= resume_step
            ]  # fmt: skip
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise SbmoeError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from error
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

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
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, state.global_step)

    def validation(self, state: TrainerState, metrics: dict[str, float], improved: bool) -> None:
        if not self.enabled:
            return
        self._write({"type": "validation", "epoch": state.epoch + 1, "global_step": state.global_step,
                     **metrics, "improved": improved})  # fmt: skip
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"validation/{key}", value, state.global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
