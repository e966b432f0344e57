"""The encoder's compute precision: float32, or bfloat16 autocast where the hardware makes it fast.

Only the encoder's forward runs under `torch.autocast`; master weights, optimiser state, pooled vectors,
the MoE block and its routing stay float32. bfloat16 is fast on CPUs with AMX or AVX512-BF16 (measured
2.8x float32 for MiniLM-L6 encoding) and on GPUs that support it; elsewhere torch emulates it, and it is
slower than float32 (several times slower for MiniLM-L6 on an AVX2-only AMD EPYC: BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the command line reads DTYPES without it
    import torch

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "auto")
DTYPE_HELP = (
    "encoder precision: bfloat16 runs under autocast (weights, routing and embeddings stay float32); "
    "auto = bfloat16 where the CPU (AMX, AVX512-BF16) or GPU has it, else float32"
)

_warned: set[str] = set()


def bfloat16_is_fast(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matrix products natively (CUDA bf16; a CPU with AMX or AVX512-BF16)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bfloat16()
    return False


def _cpu_has_bfloat16() -> bool:
    import torch

    # Private in torch 2.13 but present; a torch without them is treated as having neither.
    names = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    checks = [getattr(torch.cpu, name, None) for name in names]
    return any(check() for check in checks if check is not None)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype a `--dtype` setting means on `device`: "auto" is bfloat16 where it is fast, else float32.

    An explicit "bfloat16" where it is not fast is honoured, with a warning. Raises ValueError naming the
    choices for anything else.
    """
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if bfloat16_is_fast(device) else torch.float32
    if name == "bfloat16" and not bfloat16_is_fast(device) and device.type not in _warned:
        _warned.add(device.type)
        logger.warning(
            "bfloat16 on this %s is emulated (no AMX / AVX512-BF16 / bf16 GPU) and will be slower than "
            "float32; --dtype auto picks float32 here",
            device.type,
        )
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32" or "bfloat16" (as saved in settings files and cache keys)."""
    return str(dtype).removeprefix("torch.")


def encoder_autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The context the encoder's forward runs in: bfloat16 autocast, or nothing for float32."""
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype != torch.bfloat16:
        raise ValueError(f"encoder dtype must be float32 or bfloat16, got {dtype}")
    return torch.autocast(device.type, dtype=torch.bfloat16)
