"""Distributed training's collectives hand the backend only tensors on the device it serves.

NCCL takes CUDA tensors only, so a CPU tensor reaching a collective fails on GPUs; this machine has none.
Instead, every torch.distributed collective is replaced by a spy that checks each tensor it receives is on
`info.device`, here the meta device, and does nothing else: any tensor made on the CPU (a mask, a
statistic, a broadcast value) fails the check. Reading a meta tensor back (`.tolist()`, `.to("cpu")`) gives
ones (`MetaReadsAsOnes`), so that the helpers run to the end. The values themselves are checked by the
two-process runs in test_training.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from sbmoe.distributed import DistributedInfo
from sbmoe.modeling import build_model
from sbmoe.training import trainer
from sbmoe.training.checkpoint import DeviceGenerator, Resumable, TrainerState, _random_states
from sbmoe.training.config import TrainingConfig
from sbmoe.training.distributed import (
    _buckets,
    all_gather_tensors,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_values,
    gather_with_grad,
)

META = torch.device("meta")
COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "_all_gather_base",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "_reduce_scatter_base",
    "all_to_all",
    "all_to_all_single",
    "scatter",
    "gather",
    "reduce",
)


class MetaReadsAsOnes(TorchDispatchMode):
    """A meta tensor copied to another device, or read as a number, reads as ones instead of failing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and source.is_meta:
            if func is torch.ops.aten._to_copy.default and kwargs.get("device", META) != META:
                dtype = kwargs.get("dtype") or source.dtype
                return torch.ones(source.shape, dtype=dtype, device=kwargs["device"])
            if func is torch.ops.aten._local_scalar_dense.default:
                return torch.ones((), dtype=source.dtype).item()
        return func(*args, **kwargs)


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return tensors_in(list(value.values()))
    return []


@pytest.fixture
def on_meta(monkeypatch):
    """(info, calls): process 1 of 2 whose backend serves the meta device, every collective a spy that
    records its name in `calls`. The backend claims to be NCCL, so torch's own differentiable all_gather
    takes its NCCL path (reduce_scatter) in backward."""
    info = DistributedInfo(rank=1, world_size=2, device=META)
    calls: list[str] = []

    def spy(name):
        def collective(*args, **kwargs):
            tensors = tensors_in([args, kwargs])
            assert tensors, f"{name} received no tensor"
            for tensor in tensors:
                assert tensor.device == info.device, f"{name} received a tensor on {tensor.device}"
            calls.append(name)

        return collective

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, spy(name))
    monkeypatch.setattr(dist, "barrier", lambda *args, **kwargs: None)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: info.rank)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: info.world_size)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: dist.Backend.NCCL)
    with MetaReadsAsOnes():
        yield info, calls


def test_gathered_embeddings_and_their_gradients(on_meta):
    info, calls = on_meta
    embeddings = torch.randn(3, 4, requires_grad=True)  # on the CPU, as a model's output there
    gathered = gather_with_grad(embeddings, info)
    assert gathered.shape == (6, 4) and gathered.device == embeddings.device
    gathered.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.shape == (3, 4)
    assert calls == ["all_gather", "reduce_scatter"]


def test_gradients_and_their_mask(on_meta):
    info, calls = on_meta
    parameters = [torch.nn.Parameter(torch.zeros(5)) for _ in range(3)]
    parameters[0].grad = torch.ones(5)  # this process gave the others none
    all_reduce_gradients(parameters, info)
    assert calls == ["all_reduce", "all_reduce"]  # the mask, then one bucket
    assert all(p.grad is not None and p.grad.device == p.device for p in parameters)


def test_sums(on_meta):
    info, calls = on_meta
    assert all_reduce_sum(torch.zeros(3), info).device == torch.device("cpu")
    assert calls == ["all_reduce"]


def test_broadcast_values(on_meta):
    info, calls = on_meta
    assert broadcast_values([0.0, 2.5], info) == [1.0, 1.0]  # rank 0's values, read as ones here
    assert calls == ["broadcast"]


def test_gathered_states(on_meta):
    info, calls = on_meta
    states = all_gather_tensors(torch.zeros(2, dtype=torch.uint8), info)
    assert [state.device for state in states] == [torch.device("cpu")] * 2
    assert calls == ["all_gather"]


def test_the_trainers_routing_statistics(on_meta, tiny_encoder):
    info, calls = on_meta
    model, _ = build_model(tiny_encoder, num_experts=3)
    with torch.no_grad():
        output = model.head(torch.randn(4, model.config.hidden_size))
    stats = trainer._routing_stats(model, (output, output, None), info)
    assert stats["counts"].device == torch.device("cpu")
    assert calls == ["all_reduce"]


def test_the_trainers_validation_decision(on_meta, tiny_encoder, tmp_path):
    info, calls = on_meta
    config = TrainingConfig(
        base=str(tiny_encoder), dataset="unused", output_dir=str(tmp_path), progress=False
    )
    run = trainer.TrainingRun(config, info, data=None, output=tmp_path)  # process 1: no validation of its own
    state = TrainerState()
    trainer._end_of_epoch(run, net=None, state=state, log=None)
    assert state.history == [{"epoch": 0, trainer.VALIDATION_METRIC: 1.0}]
    assert calls == ["broadcast"]


def test_the_checkpoints_random_states(on_meta):
    info, calls = on_meta
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state, as torch keeps it: on the CPU
    resumable = Resumable(
        optimizer=None,
        scheduler=None,
        noise_generator=torch.Generator(),
        device_generator=DeviceGenerator(get_state=lambda: cuda_state, set_state=lambda state: None),
    )
    assert set(_random_states(resumable, info)) == {"noise", "torch", "cuda.rank0", "cuda.rank1"}
    assert calls == ["all_gather"]


# ----------------------------------------------------------------------------------------------- buckets


def test_buckets_hold_consecutive_parameters_of_one_dtype_up_to_their_size():
    sizes_and_dtypes = [
        (4, torch.float32),
        (4, torch.float32),
        (8, torch.float32),
        (2, torch.float64),
        (1, torch.float64),
    ]
    parameters = [torch.nn.Parameter(torch.zeros(n, dtype=dtype)) for n, dtype in sizes_and_dtypes]
    buckets = list(_buckets(parameters, bucket_bytes=32))  # 8 float32 or 4 float64
    assert [[p.numel() for p in bucket] for bucket in buckets] == [[4, 4], [8], [2, 1]]
    assert [p for bucket in buckets for p in bucket] == parameters  # every parameter once, in order


@pytest.fixture
def one_process_gloo(tmp_path):
    """A real gloo group of one process, and an info that says two: its sums are identities, so what the
    buckets do to values and to missing gradients shows."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield DistributedInfo(rank=0, world_size=2)
    finally:
        dist.destroy_process_group()


def test_bucketed_gradients_keep_their_values_and_no_gradient_stays_none(one_process_gloo):
    torch.manual_seed(0)
    parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(3, 2), (5,), (2, 2), (4,), (1,)]]
    for parameter in parameters[:3] + parameters[4:]:
        parameter.grad = torch.randn_like(parameter)
    expected = [None if p.grad is None else p.grad.clone() for p in parameters]
    all_reduce_gradients(parameters, one_process_gloo, bucket_bytes=40)  # two buckets: (3, 2), then the rest
    assert parameters[3].grad is None  # no process gave it one: AdamW skips it, as in one process
    for parameter, grad in zip(parameters, expected, strict=True):
        if grad is not None:
            assert parameter.grad.shape == parameter.shape and torch.equal(parameter.grad, grad)
