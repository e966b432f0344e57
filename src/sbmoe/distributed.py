"""The torch.distributed process group: join it under torchrun or accelerate launch (NCCL on GPUs, gloo on
CPUs), know this process's rank and the device its collectives take tensors on, wait for the others. Shared
by training (`sbmoe.training.distributed` adds the gradient collectives) and sharded encoding (`sbmoe
encode` under torchrun: one shard per process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # The device of every tensor handed to a collective: NCCL takes only CUDA tensors (this process's GPU),
    # gloo CPU ones. A tensor elsewhere is moved there first and its result moved back.
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistributedInfo:
    """Join the process group described by torchrun's environment variables (accelerate launch sets the
    same ones), if any: NCCL when CUDA is available, else gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before NCCL starts: each process on its own GPU
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return DistributedInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=backend_device(dist.get_backend(), local_rank),
    )


def backend_device(backend: str, local_rank: int) -> torch.device:
    """The device whose tensors `backend` reduces: this process's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", local_rank) if backend == dist.Backend.NCCL else torch.device("cpu")


def barrier(info: DistributedInfo) -> None:
    if info.enabled:
        dist.barrier()
