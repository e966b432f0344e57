"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`: this imports as `_common`)."""

from __future__ import annotations

import argparse
import os


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
