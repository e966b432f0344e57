"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`: this imports as `_common`)."""

from __future__ import annotations

import argparse
import os
import platform


def set_openblas_threads(args: argparse.Namespace) -> str:
    """Set OPENBLAS_NUM_THREADS for faiss's bundled OpenBLAS (slow and erratic with several threads here):
    `args.faiss_openblas_threads`, else the environment's value, else 1. Call before `import faiss`."""
    if args.faiss_openblas_threads is not None:
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.faiss_openblas_threads)
    else:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return os.environ["OPENBLAS_NUM_THREADS"]


def proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status in KiB (Linux): VmRSS (resident now), VmHWM (peak resident)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def cpu_report() -> dict[str, object]:
    """The CPU model, its bfloat16 capabilities as torch sees them, and what dtype "auto" picks."""
    model_name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model_name = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                model_name,
            )
    except OSError:
        pass

    import torch

    from sbmoe.modeling.precision import dtype_name, resolve_dtype

    def capability(name: str) -> bool | None:  # private torch helpers: None where this torch lacks them
        check = getattr(torch.cpu, name, None)
        return bool(check()) if check is not None else None

    return {
        "model_name": model_name,
        "amx_tile": capability("_is_amx_tile_supported"),
        "avx512_bf16": capability("_is_avx512_bf16_supported"),
        "auto_dtype": dtype_name(resolve_dtype("auto", torch.device("cpu"))),
    }
