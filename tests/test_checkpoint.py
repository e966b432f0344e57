"""Checkpoints keep each process's CUDA random state; CPU runs and older checkpoints are as before.

There is no GPU here: a `DeviceGenerator` of a fake CUDA state stands in for `torch.cuda.get_rng_state`
and `set_rng_state`, which is all a checkpoint asks of the device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from sbmoe.distributed import DistributedInfo
from sbmoe.modeling import build_model
from sbmoe.training.checkpoint import (
    DeviceGenerator,
    Resumable,
    device_generator,
    load_checkpoint,
    save_checkpoint,
)


class FakeCuda:
    """The state a CUDA generator would hold (16 bytes, on the CPU), read and set through `generator`."""

    def __init__(self, value: int) -> None:
        self.state = torch.full((16,), value, dtype=torch.uint8)
        self.generator = DeviceGenerator(get_state=lambda: self.state.clone(), set_state=self._set)

    def _set(self, state: torch.Tensor) -> None:
        self.state = state.clone()

    def holds(self, value: int) -> bool:
        return torch.equal(self.state, torch.full((16,), value, dtype=torch.uint8))


@pytest.fixture
def model_and_tokenizer(tiny_encoder):
    return build_model(tiny_encoder, num_experts=3)


def resumable_for(model, generator: DeviceGenerator | None) -> Resumable:
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = get_scheduler("constant", optimizer)
    return Resumable(optimizer, scheduler, torch.Generator().manual_seed(1), device_generator=generator)


def saved(output: Path, model_and_tokenizer, generator) -> tuple[Path, dict[str, torch.Tensor]]:
    """Save a checkpoint of one process; (its folder, its rng.safetensors)."""
    model, tokenizer = model_and_tokenizer
    save_checkpoint(output, model, tokenizer, resumable_for(model, generator), DistributedInfo())
    (folder,) = (output / "checkpoints").glob("step-*")
    return folder, load_file(folder / "rng.safetensors")


def resume(folder: Path, model, cuda: FakeCuda, info: DistributedInfo | None = None) -> None:
    resumable = resumable_for(model, cuda.generator)
    load_checkpoint(folder, model, resumable, info or DistributedInfo())


def test_a_cuda_random_state_is_saved_and_restored(model_and_tokenizer, tmp_path):
    folder, rng = saved(tmp_path / "run", model_and_tokenizer, FakeCuda(7).generator)
    assert set(rng) == {"noise", "torch", "cuda.rank0"}
    resumed = FakeCuda(0)
    resume(folder, model_and_tokenizer[0], resumed)
    assert resumed.holds(7)


def test_a_cpu_run_saves_what_it_always_did(model_and_tokenizer, tmp_path):
    assert device_generator(torch.device("cpu")) is None
    assert device_generator(torch.device("cuda", 1)) is not None  # read only when a checkpoint is saved
    _, rng = saved(tmp_path / "run", model_and_tokenizer, None)
    assert set(rng) == {"noise", "torch"}


def test_a_checkpoint_without_cuda_states_resumes_from_the_seed_with_a_warning(
    model_and_tokenizer, tmp_path, caplog
):
    folder, _ = saved(tmp_path / "run", model_and_tokenizer, None)  # a CPU run's, or an older sbmoe's
    resumed = FakeCuda(3)
    with caplog.at_level(logging.WARNING):
        resume(folder, model_and_tokenizer[0], resumed)
    assert resumed.holds(3)  # as seeded
    assert "no CUDA random state for process 0" in caplog.text


def test_each_process_restores_its_own_cuda_state(model_and_tokenizer, tmp_path):
    folder, rng = saved(tmp_path / "run", model_and_tokenizer, FakeCuda(5).generator)
    rng["cuda.rank1"] = torch.full((16,), 9, dtype=torch.uint8)  # as a two-process run saves it
    save_file(rng, folder / "rng.safetensors")
    for rank, value in ((0, 5), (1, 9)):
        resumed = FakeCuda(0)
        resume(folder, model_and_tokenizer[0], resumed, DistributedInfo(rank=rank, world_size=2))
        assert resumed.holds(value), rank
