"""The gradient collectives of distributed training (the process group itself: `sbmoe.distributed`).

Every process computes the same global loss from embeddings gathered across processes and backpropagates
loss / world_size; `gather_with_grad` routes each process's share of the gradient back to it, and
`all_reduce_gradients` sums parameter gradients. The result equals a one-process step on the global
batch, and experts that top-1 routing left unused in a process need no special handling.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sbmoe.distributed import DistributedInfo


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward sums the gradient over processes and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor, info: DistributedInfo) -> torch.Tensor:
    """[b, ...] per process -> [b * world_size, ...] in rank order, differentiable."""
    return _GatherWithGrad.apply(tensor) if info.enabled else tensor


def all_reduce_gradients(parameters: list[torch.nn.Parameter], info: DistributedInfo) -> None:
    """Sum gradients over processes.

    A parameter keeps no gradient only if no process gave it one (an expert nobody was routed to, an
    unused pooler), exactly as in a one-process step, where AdamW then skips it, weight decay included.
    """
    if not info.enabled:
        return
    has_grad = torch.tensor([float(p.grad is not None) for p in parameters])
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    for parameter, anywhere in zip(parameters, has_grad.tolist(), strict=True):
        if not anywhere:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)


def all_reduce_sum(tensor: torch.Tensor, info: DistributedInfo) -> torch.Tensor:
    if info.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def broadcast_values(values: list[float], info: DistributedInfo) -> list[float]:
    """Rank 0's numbers on every process (flags and metrics decided by the main process)."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()
