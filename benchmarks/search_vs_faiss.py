"""Exact top-k search speed and memory: sbmoe `exact_search` vs faiss `IndexFlatIP`, in one run.

Inputs: Q queries and N documents of dimension D, standard-normal float32 from a seeded numpy generator
(default 1,000 x 100,000 x 384, top 100).

Time (one process, after one warm-up call of each method, measured calls interleaved A B A B ...):
* sbmoe: ``exact_search(queries, corpus, k)`` with its default 256 MiB score-block budget; it needs no
  index, so its time is the whole job.
* faiss: ``IndexFlatIP(D)`` + ``add(corpus)`` (reported as "build") and ``search(queries, k)``
  (reported as "search"); "total" is build + search. The ratios are given against both faiss's search
  alone (an index built once and reused) and its total (one-shot search, as sbmoe's own faiss backend
  does it).

faiss bundles its own OpenBLAS, which is slower and erratic with more than one thread on this machine,
so the script sets OPENBLAS_NUM_THREADS=1 in its environment before faiss is imported (unless the
variable is already set; pass --faiss-openblas-threads to choose). torch uses MKL here and is not
affected by the variable; it keeps its default thread count.

Memory: each method runs once more in a fresh child process (this script with --only METHOD
--measure-memory). The child creates the inputs, imports its library and warms it up on a small slice,
then records its resident size (VmRSS); the reported figure is the peak resident size at the end
(VmHWM, the kernel's high-water mark; getrusage's ru_maxrss would carry over the parent's size into
the child) minus that baseline, i.e. the extra memory the search itself needed, faiss's copy of the
corpus inside its index included.

Usage (the documented configuration is the default):

    .venv/bin/python benchmarks/search_vs_faiss.py [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from _common import proc_status_kib, set_openblas_threads

TARGET_RATIO = 1.5  # sbmoe time over faiss time, at most
METHODS = ("sbmoe", "faiss")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--num-docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="measured calls per method (interleaved)")
    parser.add_argument(
        "--faiss-openblas-threads",
        default=None,
        help="OPENBLAS_NUM_THREADS set before faiss is imported (default: the environment's value, else 1)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--only", choices=METHODS, help="with --measure-memory: the method to measure")
    parser.add_argument(
        "--measure-memory",
        action="store_true",
        help="print one method's peak extra memory as JSON and exit (what the child processes run)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write results as JSON")
    return parser.parse_args()


def make_inputs(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Seeded standard-normal float32 queries [Q, D] and corpus [N, D], made without float64 temporaries
    (a transient larger than the inputs would hide the searches' own peak in the memory measurement)."""
    rng = np.random.default_rng(args.seed)
    corpus = rng.standard_normal((args.num_docs, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.num_queries, args.dim), dtype=np.float32)
    return queries, corpus


def sbmoe_search(queries: np.ndarray, corpus: np.ndarray, k: int) -> dict[str, Any]:
    from sbmoe.retrieval.search import exact_search

    start = time.perf_counter()
    scores, indices = exact_search(queries, corpus, k)
    total = time.perf_counter() - start
    return {"build": 0.0, "search": total, "total": total, "scores": scores, "indices": indices}


def faiss_search(queries: np.ndarray, corpus: np.ndarray, k: int) -> dict[str, Any]:
    import faiss

    start = time.perf_counter()
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    built = time.perf_counter()
    scores, indices = index.search(queries, k)
    done = time.perf_counter()
    timings = {"build": built - start, "search": done - built, "total": done - start}
    return {**timings, "scores": scores, "indices": indices.astype(np.int64)}


RUNNERS = {"sbmoe": sbmoe_search, "faiss": faiss_search}


def measure_memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: peak extra resident memory of one method's search, printed as JSON.

    The peak is VmHWM, the high-water mark of this process's own address space. getrusage's ru_maxrss
    is the same figure except that Linux carries it over from before exec, so in a child started by a
    large parent it starts at the parent's size; it is recorded too, for reference.
    """
    queries, corpus = make_inputs(args)
    run = RUNNERS[args.only]
    run(queries[:8], corpus[: max(args.k, 1000)], args.k)  # imports and first-call set-up, on a small slice
    baseline = proc_status_kib("VmRSS")
    peak_before = proc_status_kib("VmHWM")
    run(queries, corpus, args.k)
    peak = proc_status_kib("VmHWM")
    result = {
        "method": args.only,
        "baseline_kib": baseline,
        "peak_before_kib": peak_before,
        "peak_kib": peak,
        "extra_kib": peak - baseline,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(result))


def measure_memory(args: argparse.Namespace, method: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--only", method, "--measure-memory"]
    for name in ("num_queries", "num_docs", "dim", "k", "seed"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["peak_kib"] <= result["peak_before_kib"]:  # the search stayed under an earlier high-water mark
        result["warning"] = "the search did not pass the peak reached before it; the extra is an upper bound"
    return result


def main() -> None:
    args = parse_args()
    openblas_threads = set_openblas_threads(args)
    if args.measure_memory:
        if args.only is None:
            raise SystemExit("--measure-memory needs --only sbmoe|faiss")
        measure_memory_child(args)
        return

    import faiss  # after set_openblas_threads
    import torch

    queries, corpus = make_inputs(args)
    for run in RUNNERS.values():  # warm-up
        run(queries[:8], corpus, args.k)

    times: dict[str, dict[str, list[float]]] = {m: {"build": [], "search": [], "total": []} for m in METHODS}
    results: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for name, run in RUNNERS.items():
            results[name] = run(queries, corpus, args.k)
            for part in ("build", "search", "total"):
                times[name][part].append(results[name][part])
    median = {m: {part: statistics.median(v) for part, v in parts.items()} for m, parts in times.items()}

    a, b = results["sbmoe"]["indices"], results["faiss"]["indices"]
    equal_positions = float((a == b).mean())
    equal_sets = float(np.mean([len(np.intersect1d(x, y)) == args.k for x, y in zip(a, b, strict=True)]))
    max_score_diff = float(np.abs(results["sbmoe"]["scores"] - results["faiss"]["scores"]).max())
    ratio_search = median["sbmoe"]["total"] / median["faiss"]["search"]
    ratio_total = median["sbmoe"]["total"] / median["faiss"]["total"]

    memory = {} if args.no_memory else {m: measure_memory(args, m) for m in METHODS}

    versions = {
        "sbmoe": version("sbmoe"),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    print(f"date {datetime.date.today().isoformat()}  " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"top-{args.k} of {args.num_queries} queries over {args.num_docs:,} x {args.dim} float32 (seed "
        f"{args.seed}); torch threads {torch.get_num_threads()}, OPENBLAS_NUM_THREADS={openblas_threads}, "
        f"faiss omp threads {faiss.omp_get_max_threads()}; {args.repeats} interleaved repeats after a warm-up"
    )
    print()
    print(f"{'method':<8}{'build s':>9}{'search s':>10}{'total s':>9}{'peak extra MiB':>16}   all totals (s)")
    for name in METHODS:
        mem = f"{memory[name]['extra_kib'] / 1024:.0f}" if memory else "-"
        runs = " ".join(f"{v:.3f}" for v in times[name]["total"])
        m = median[name]
        print(f"{name:<8}{m['build']:>9.3f}{m['search']:>10.3f}{m['total']:>9.3f}{mem:>16}   {runs}")
    print("(medians; sbmoe needs no index, so its build is 0 and its search is its total)")
    print()

    def verdict(ratio: float) -> str:
        return "met" if ratio <= TARGET_RATIO else f"missed by {(ratio / TARGET_RATIO - 1) * 100:.1f} %"

    target = f"target <= {TARGET_RATIO}x"
    print(
        f"time ratio sbmoe / faiss search only:    {ratio_search:.3f}x  ({target}: {verdict(ratio_search)})"
    )
    print(f"time ratio sbmoe / faiss build + search: {ratio_total:.3f}x  ({target}: {verdict(ratio_total)})")
    print(f"identical indices: {equal_positions:.4%} of positions, {equal_sets:.2%} of top-{args.k} sets")
    print(f"max |score difference|: {max_score_diff:.2e}")
    for name, result in memory.items():
        if "warning" in result:
            print(f"memory ({name}): {result['warning']}")

    if args.json:
        out = {
            "benchmark": "search_vs_faiss",
            "date": datetime.date.today().isoformat(),
            "versions": versions,
            "config": {
                "num_queries": args.num_queries,
                "num_docs": args.num_docs,
                "dim": args.dim,
                "k": args.k,
                "seed": args.seed,
                "repeats": args.repeats,
                "torch_threads": torch.get_num_threads(),
                "openblas_num_threads": openblas_threads,
                "faiss_omp_threads": faiss.omp_get_max_threads(),
            },
            "seconds": times,
            "median_seconds": median,
            "ratio_sbmoe_over_faiss_search": ratio_search,
            "ratio_sbmoe_over_faiss_total": ratio_total,
            "target_ratio": TARGET_RATIO,
            "fraction_equal_positions": equal_positions,
            "fraction_equal_sets": equal_sets,
            "max_score_diff": max_score_diff,
            "memory": memory,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
