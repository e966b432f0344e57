"""What a training run keeps in its output folder besides the log: checkpoints, best/ and the final model.

    DIR/checkpoints/step-NNNNNNN/   the last checkpoint: model, tokenizer, optimizer.pt, scheduler.json,
                                    rng.safetensors (routing noise, torch's global generator and, on GPUs,
                                    each process's CUDA generator), state.json
    DIR/best/                       the best model so far (selection "best")
    DIR/config.json, model.safetensors, tokenizer files   the selected model, once training ends

Every write is staged (`sbmoe.io`), so a run killed at any moment leaves its last checkpoint loadable, and
a resumed run (`check_output` checks that it is the same run) restores the optimiser, the scheduler, the
random generators and the loop's position from it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedTokenizerBase

from sbmoe.distributed import DistributedInfo, barrier
from sbmoe.errors import SbmoeError
from sbmoe.io import staged_files, staged_folder
from sbmoe.modeling.card import model_card
from sbmoe.modeling.loading import save_model, write_model_files
from sbmoe.modeling.model import SBMoEModel
from sbmoe.training.config import FIELD_NAMES, RESUMABLE_FIELDS, TrainingConfig, upgrade_legacy_settings
from sbmoe.training.distributed import all_gather_tensors

logger = logging.getLogger(__name__)

DEVICE_RNG_KEY = "cuda.rank{rank}"  # a process's CUDA generator in rng.safetensors


@dataclass
class TrainerState:
    """Where training is; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # batches of `epoch` already done
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceGenerator:
    """Reads and sets the random state of the device a process trains on, when that device has a generator
    of its own: dropout on a GPU draws from the CUDA generator, not from torch's global (CPU) one."""

    get_state: Callable[[], torch.Tensor]
    set_state: Callable[[torch.Tensor], None]


def device_generator(device: torch.device) -> DeviceGenerator | None:
    """The CUDA generator of `device`; None for a device whose random draws come from the CPU generator."""
    if device.type != "cuda":
        return None
    return DeviceGenerator(
        get_state=lambda: torch.cuda.get_rng_state(device),
        set_state=lambda state: torch.cuda.set_rng_state(state, device),
    )


@dataclass
class Resumable:
    """Everything a checkpoint restores besides the weights and torch's global generator."""

    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    noise_generator: torch.Generator  # the routing noise of every step
    state: TrainerState = field(default_factory=TrainerState)
    device_generator: DeviceGenerator | None = None  # this process's own (`device_generator`)


def check_output(output: Path, config: TrainingConfig, resume: bool) -> Path | None:
    """Refuse to overwrite; on resume, check the configuration and return the last checkpoint (or None)."""
    saved_config = output / "training_config.json"
    if not resume:
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise SbmoeError(
                f"{output} already exists and is not empty; use --resume to continue it, or another folder"
            )
        return None
    if not saved_config.is_file():
        if output.exists() and any(output.iterdir()):
            raise SbmoeError(
                f"{output} holds no training_config.json: not a training folder, refusing to resume"
            )
        return None
    saved = _comparable(json.loads(saved_config.read_text(encoding="utf-8"))["config"], saved_config)
    current = config.to_dict()
    differing = sorted(key for key in FIELD_NAMES - RESUMABLE_FIELDS if saved.get(key) != current.get(key))
    if differing:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in differing)
        raise SbmoeError(
            f"{output} was trained with a different configuration ({details}); refusing to resume"
        )
    checkpoints = sorted((output / "checkpoints").glob("step-*"))
    return checkpoints[-1] if checkpoints else None


def _comparable(saved: dict[str, Any], where: Path) -> dict[str, Any]:
    """A saved training config as this version would resolve it: old key names upgraded, fields added
    since then at their defaults (which reproduce the old behaviour)."""
    saved = upgrade_legacy_settings(saved, str(where), warn=False)
    try:
        return TrainingConfig(**{key: value for key, value in saved.items() if key in FIELD_NAMES}).to_dict()
    except (TypeError, ValueError):
        return saved  # compared as written: whatever differs is reported


def remove_staging_leftovers(output: Path) -> None:
    """Temporary folders of staged writes a killed run left behind (best/, checkpoints, the final model):
    only this run writes in `output`, so none of them is in use."""
    for pattern in (".best.*", ".incoming.*", "checkpoints/.step-*"):
        for path in output.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


ENCODER_PREFIX = "encoder."


def _encoder_trains(model: SBMoEModel) -> bool:
    return any(parameter.requires_grad for parameter in model.encoder.parameters())


def save_checkpoint(
    output: Path,
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    resumable: Resumable,
    info: DistributedInfo,
) -> None:
    """The checkpoint of `resumable.state.global_step` (written by the main process, with the generator
    state of every process; every process waits for it); older checkpoints are removed once it is
    complete.

    It is a model folder, except when the encoder is frozen: the encoder is then the base's, rebuilt on
    resume, and the checkpoint holds only the other weights (writing the whole folder every epoch took a
    third of a frozen run)."""
    rng = _random_states(resumable, info)  # a collective: every process takes part
    if info.is_main:
        folder = output / "checkpoints" / f"step-{resumable.state.global_step:07d}"
        if not folder.exists():
            with staged_folder(folder) as staging:
                if _encoder_trains(model):
                    write_model_files(model, tokenizer, staging)
                else:
                    weights = {
                        k: v for k, v in model.state_dict().items() if not k.startswith(ENCODER_PREFIX)
                    }
                    save_file({k: v.contiguous() for k, v in weights.items()}, staging / "model.safetensors")
                torch.save(resumable.optimizer.state_dict(), staging / "optimizer.pt")
                (staging / "scheduler.json").write_text(json.dumps(resumable.scheduler.state_dict()))
                save_file(rng, staging / "rng.safetensors")
                (staging / "state.json").write_text(json.dumps(resumable.state.__dict__, indent=2))
            for older in sorted((output / "checkpoints").glob("step-*")):
                if older != folder:
                    shutil.rmtree(older, ignore_errors=True)
    barrier(info)


def _random_states(resumable: Resumable, info: DistributedInfo) -> dict[str, torch.Tensor]:
    """What rng.safetensors holds: the routing noise's generator (the same in every process), torch's
    global generator, and with a device generator each process's under `DEVICE_RNG_KEY`, gathered from
    all of them."""
    states = {"noise": resumable.noise_generator.get_state(), "torch": torch.get_rng_state()}
    if resumable.device_generator is not None:
        gathered = all_gather_tensors(resumable.device_generator.get_state(), info)
        states |= {DEVICE_RNG_KEY.format(rank=rank): state for rank, state in enumerate(gathered)}
    return states


def load_checkpoint(folder: Path, model: SBMoEModel, resumable: Resumable, info: DistributedInfo) -> None:
    """Restore the weights, `resumable` (its state replaced), torch's global generator and this process's
    device generator from `folder`. A checkpoint of a frozen-encoder run has no encoder weights: `model`'s
    own (the base's) stay."""
    frozen = (
        set() if _encoder_trains(model) else {k for k in model.state_dict() if k.startswith(ENCODER_PREFIX)}
    )
    missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    if unexpected or not set(missing) <= frozen:
        raise SbmoeError(
            f"{folder}: checkpoint weights do not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    resumable.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    resumable.scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    rng = load_file(folder / "rng.safetensors")
    resumable.noise_generator.set_state(rng["noise"])
    torch.set_rng_state(rng["torch"])
    _restore_device_generator(rng, resumable.device_generator, info.rank, folder)
    resumable.state = TrainerState(**json.loads((folder / "state.json").read_text()))


def _restore_device_generator(
    rng: dict[str, torch.Tensor], generator: DeviceGenerator | None, rank: int, folder: Path
) -> None:
    """Set this process's device generator from its saved state. A checkpoint without one (written before
    sbmoe saved them, by a CPU run or by fewer processes) leaves it as seeded, with a warning: dropout then
    differs from the interrupted run's."""
    if generator is None:
        return
    state = rng.get(DEVICE_RNG_KEY.format(rank=rank))
    if state is None:
        logger.warning(
            "%s holds no CUDA random state for process %d: its dropout continues from the seed, not from "
            "where the interrupted run stopped",
            folder, rank,
        )  # fmt: skip
        return
    generator.set_state(state)


def save_best_model(output: Path, model: SBMoEModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Replace DIR/best/ with `model`."""
    save_model(model, tokenizer, output / "best", replace=True)


def save_final_model(
    output: Path,
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    from_best: bool,
    card: dict[str, Any] | None = None,
) -> None:
    """Put the selected model at the top of `output`: a copy of best/ (when `from_best` and it exists), else
    `model`, with the model card `card` describes (`write_model_files`). Weights before config.json, each
    file replaced in one step."""
    best = output / "best"
    with staged_files(output, last="config.json") as staging:
        if from_best and best.is_dir():
            for path in best.iterdir():
                if path.is_file():
                    shutil.copy2(path, staging / path.name)
            model_card(model.config, **(card or {})).save(staging / "README.md")
        else:
            write_model_files(model, tokenizer, staging, card=card)
