"""The collectives of distributed training (the process group itself: `sbmoe.distributed`).

Every process computes the same global loss from embeddings gathered across processes and backpropagates
loss / world_size; `gather_with_grad` routes each process's share of the gradient back to it, and
`all_reduce_gradients` sums parameter gradients. The result equals a one-process step on the global
batch, and experts that top-1 routing left unused in a process need no special handling.

Every tensor handed to a collective is on `info.device`, the device the backend serves (NCCL takes only
CUDA tensors), whatever device the caller's tensor is on; results come back on the caller's device.
Collectives are called as `dist.<name>` so that a test can watch every one of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as differentiable

from sbmoe.distributed import DistributedInfo

BUCKET_BYTES = 25 * 1024 * 1024  # gradients summed per all_reduce: DistributedDataParallel's default


def gather_with_grad(tensor: torch.Tensor, info: DistributedInfo) -> torch.Tensor:
    """[b, ...] per process -> [b * world_size, ...] in rank order, on `tensor`'s device, differentiable.

    torch's all_gather: its backward sums the gradient of the gathered tensor over processes and returns
    this rank's rows (a reduce_scatter under NCCL, an all-to-all and a sum under gloo), which is what
    backpropagating loss / world_size from every process needs. (Its NCCL backward could drop the gradient
    until pytorch#120582, February 2024: before torch 2.4, the oldest sbmoe supports.) torch 2.13 marks it
    deprecated in favour of the private `torch.distributed._functional_collectives`; it works, so that
    warning is silenced.
    """
    if not info.enabled:
        return tensor
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*functional\.all_gather is deprecated", FutureWarning)
        parts = differentiable.all_gather(tensor.to(info.device))
    return torch.cat(parts).to(tensor.device)


def all_reduce_gradients(
    parameters: list[torch.nn.Parameter], info: DistributedInfo, bucket_bytes: int = BUCKET_BYTES
) -> None:
    """Sum gradients over processes, one all_reduce per bucket of about `bucket_bytes` (`_buckets`).

    A parameter keeps no gradient only if no process gave it one (an expert nobody was routed to, an
    unused pooler), exactly as in a one-process step, where AdamW then skips it, weight decay included.
    A process that gave none where another did contributes zeros.
    """
    if not info.enabled:
        return
    anywhere = _has_gradient_anywhere(parameters, info)
    reduced = [parameter for parameter, used in zip(parameters, anywhere, strict=True) if used]
    for bucket in _buckets(reduced, bucket_bytes):
        _all_reduce_bucket(bucket, info)


def _has_gradient_anywhere(parameters: list[torch.nn.Parameter], info: DistributedInfo) -> list[bool]:
    """For each parameter, whether some process holds a gradient for it (one all_reduce of a mask)."""
    mask = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=info.device)
    dist.all_reduce(mask, op=dist.ReduceOp.MAX)
    return [bool(flag) for flag in mask.tolist()]


def _buckets(parameters: list[torch.nn.Parameter], bucket_bytes: int) -> Iterator[list[torch.nn.Parameter]]:
    """Runs of consecutive parameters of one dtype and device (they flatten into one tensor), each at most
    `bucket_bytes` unless a single parameter is larger. Every process forms the same buckets."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for parameter in parameters:
        nbytes = parameter.numel() * parameter.element_size()
        if bucket and (
            size + nbytes > bucket_bytes
            or (parameter.dtype, parameter.device) != (bucket[0].dtype, bucket[0].device)
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(parameter)
        size += nbytes
    if bucket:
        yield bucket


def _all_reduce_bucket(bucket: list[torch.nn.Parameter], info: DistributedInfo) -> None:
    """Sum the bucket's gradients in one all_reduce of their concatenation (zeros for a parameter without a
    gradient here); each parameter's gradient becomes its slice of the sum."""
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
    ).to(info.device)
    dist.all_reduce(flat)
    for parameter, summed in zip(bucket, flat.split([p.numel() for p in bucket]), strict=True):
        parameter.grad = summed.view_as(parameter).to(parameter.device)


def all_reduce_sum(tensor: torch.Tensor, info: DistributedInfo) -> torch.Tensor:
    """The sum of `tensor` over processes, on `tensor`'s device (`tensor` itself is left as it is)."""
    if not info.enabled:
        return tensor
    summed = tensor.to(info.device, copy=True)
    dist.all_reduce(summed)
    return summed.to(tensor.device)


def all_gather_tensors(tensor: torch.Tensor, info: DistributedInfo) -> list[torch.Tensor]:
    """Every process's `tensor` (one shape and dtype on all of them) in rank order, on `tensor`'s device;
    not differentiable. For state each process holds its own of, such as its CUDA generator's."""
    if not info.enabled:
        return [tensor]
    local = tensor.to(info.device).contiguous()
    parts = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(parts, local)
    return [part.to(tensor.device) for part in parts]


def broadcast_values(values: list[float], info: DistributedInfo) -> list[float]:
    """Rank 0's numbers on every process (flags and metrics decided by the main process)."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()
