"""Exact search vs approximate indexes (faiss HNSW, IVF-PQ) on synthetic clustered vectors.

Inputs: N documents and Q queries of dimension D (default 1,000,000 + 1,000 x 384, top k = 100), unit
vectors made by `sbmoe.data.synthetic.synthetic_vectors` around `--num-clusters` random centres (default
1,000, noise norm `--spread` 0.5). It is called once for N + Q vectors: the first N rows are the corpus,
the last Q the queries. So the queries come from the same centres and noise law as the documents (each
lies near some documents, as a real query does) but are separate draws of the same generator, not in the
corpus. The array is written once to `--work-dir` (default /tmp/sbmoe-ann-bench; about 1.5 GB at the
default size) with its parameters in a JSON beside it, and reused while they match.

Methods, each run in a fresh child process (this script with --only METHOD):
* exact: sbmoe `exact_search(queries, corpus, k)` (no index; its default 256 MiB score-block budget).
* faiss-flat: faiss `IndexFlatIP` + `add` (build) and `search`: the peer for exact search.
* hnsw, ivfpq: `build_ann_index(corpus, kind, ann_settings(kind, N, D, **overrides))` (build) and
  `ann_search(index, queries, k, embeddings=corpus, refine=R)` (search). Defaults are sbmoe's: hnsw m 32,
  ef_construction 100, ef_search 128; ivfpq nlist ~ sqrt(N) (a power of two), pq_m D / 8, 8 bits,
  nprobe 16, refine 4 (the top 4k by PQ codes re-scored exactly from the vectors) and, for comparison,
  refine 0 (PQ scores alone). Several --ef-search / --nprobe / --refine values are searched on the one
  index built, each timed and scored apart.

In the child: the whole N + Q array is read into memory with np.load (no memory map), the library is
imported and warmed up on a small slice, and the resident size (VmRSS of /proc/self/status) is taken as
the baseline; every method starts from the same point. Then build (timed), then for each search setting
one warm-up search of 10 queries and --repeats timed searches of all Q queries (the median is reported).
"peak extra" is the high-water mark VmHWM at the end minus the baseline: the memory the build and the
searches needed, including the copy of the vectors that faiss flat and HNSW indexes keep (IVF-PQ keeps
only codes). "index size" is len(faiss.serialize_index(index)), taken after the memory figures (the
serialised copy would count otherwise); 0 for exact, which has no index.

Recall@k of every method is |its top k ∩ exact top k| / k averaged over queries
(`sbmoe.retrieval.ann.recall_against_exact`), against the top k rows that the exact child saves in the work
dir (reused from an earlier run with the same vectors and k when exact is not among --methods). faiss-flat
should score 1.0, up to ties and float rounding at rank k: a check of the reference.

faiss bundles its own OpenBLAS, slow and erratic with several threads on this machine, so
OPENBLAS_NUM_THREADS=1 is set before faiss is imported (unless already set; see
--faiss-openblas-threads); the children inherit it. torch (exact) uses MKL and its default thread count;
faiss's OpenMP threads (HNSW and IVF search, k-means) are faiss's default. Both are recorded.

Usage (the documented configuration is the default):

    .venv/bin/python benchmarks/ann_search.py [--ef-search 64 128 256] [--nprobe 8 16 32] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from _common import proc_status_kib, set_openblas_threads

METHODS = ("exact", "faiss-flat", "hnsw", "ivfpq")
VECTORS_FILE = "vectors.npy"
EXACT_ROWS_FILE = "exact-rows.npy"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-docs", type=int, default=1_000_000)
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--num-clusters", type=int, default=1000)
    parser.add_argument(
        "--spread", type=float, default=0.5, help="noise norm around the centres (synthetic_vectors's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="vectors, and the IVF-PQ training sample")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/sbmoe-ann-bench"))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD")
    parser.add_argument("--ef-search", type=int, nargs="+", default=None, help="hnsw (default 128)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=None, help="ivfpq (default 16)")
    parser.add_argument(
        "--refine", type=int, nargs="+", default=None, help="ivfpq exact re-scoring factors (default 0 and 4)"
    )
    parser.add_argument("--hnsw-m", type=int, default=None, help="hnsw (default 32)")
    parser.add_argument("--ef-construction", type=int, default=None, help="hnsw (default 100)")
    parser.add_argument("--nlist", type=int, default=None, help="ivfpq (default ~sqrt(N))")
    parser.add_argument("--pq-m", type=int, default=None, help="ivfpq (default D / 8)")
    parser.add_argument("--repeats", type=int, default=1, help="timed searches per setting (median)")
    parser.add_argument(
        "--faiss-openblas-threads",
        default=None,
        help="OPENBLAS_NUM_THREADS set before faiss is imported (default: the environment's value, else 1)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write results as JSON")
    parser.add_argument(
        "--only", choices=METHODS, help="internal: run one method here and print its result as JSON"
    )
    args = parser.parse_args()
    args.methods = [m for m in METHODS if m in args.methods]  # exact first: the others' recall needs it
    return args


def vector_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "generator": "sbmoe.data.synthetic.synthetic_vectors, N + Q rows: corpus first, queries last",
        "sbmoe": version("sbmoe"),
        "num_docs": args.num_docs,
        "num_queries": args.num_queries,
        "dim": args.dim,
        "num_clusters": args.num_clusters,
        "spread": args.spread,
        "seed": args.seed,
    }


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_vectors(args: argparse.Namespace) -> tuple[Path, bool]:
    """The cached N + Q vectors, generated unless they exist with the same parameters. (path, reused)"""
    from sbmoe.data.synthetic import synthetic_vectors

    args.work_dir.mkdir(parents=True, exist_ok=True)
    path, meta = args.work_dir / VECTORS_FILE, args.work_dir / (VECTORS_FILE + ".json")
    params = vector_params(args)
    rows = args.num_docs + args.num_queries
    if path.exists() and read_json(meta) == params:
        if np.load(path, mmap_mode="r").shape == (rows, args.dim):
            return path, True
    meta.unlink(missing_ok=True)
    partial = args.work_dir / (VECTORS_FILE + ".partial")
    vectors = synthetic_vectors(
        rows, args.dim, num_clusters=args.num_clusters, spread=args.spread, seed=args.seed, path=partial
    )
    del vectors  # flushed by synthetic_vectors; drop the map
    os.replace(partial, path)
    meta.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return path, False


def search_settings(args: argparse.Namespace, method: str) -> tuple[dict[str, Any], list[dict[str, int]]]:
    """(settings for ann_settings / the method, the search-time settings to try: one dict each)."""
    from sbmoe.retrieval.ann import ann_settings

    if method == "hnsw":
        overrides = {"m": args.hnsw_m, "ef_construction": args.ef_construction}
        settings = ann_settings("hnsw", args.num_docs, args.dim, **overrides)
        return settings, [{"ef_search": v} for v in args.ef_search or [settings["ef_search"]]]
    if method == "ivfpq":
        settings = ann_settings("ivfpq", args.num_docs, args.dim, nlist=args.nlist, pq_m=args.pq_m)
        nprobes = args.nprobe or [settings["nprobe"]]
        refines = args.refine if args.refine is not None else [0, settings["refine"]]
        return settings, [{"nprobe": n, "refine": r} for n in nprobes for r in refines]
    if method == "exact":
        from sbmoe.retrieval.search import DEFAULT_MAX_SCORE_BYTES

        return {"max_score_bytes": DEFAULT_MAX_SCORE_BYTES}, [{}]
    return {}, [{}]


def run_child(args: argparse.Namespace) -> None:
    """In a fresh process: build (if any), time the searches, measure memory; print the result as JSON."""
    method = args.only
    data = np.load(args.work_dir / VECTORS_FILE)  # into memory: every method starts from here
    corpus, queries = data[: args.num_docs], data[args.num_docs :]
    assert corpus.flags.c_contiguous and queries.flags.c_contiguous and len(queries) == args.num_queries
    settings, values = search_settings(args, method)
    threads: dict[str, int] = {}

    if method == "exact":
        import torch

        from sbmoe.retrieval.search import exact_search

        exact_search(queries[:8], corpus[: max(args.k, 1000)], args.k)  # imports, first-call set-up
        threads["torch"] = torch.get_num_threads()
    else:
        import faiss

        from sbmoe.retrieval.ann import ann_search, build_ann_index, set_search_settings

        warm = faiss.IndexFlatIP(args.dim)  # imports, OpenMP and BLAS set-up
        warm.add(corpus[:1000])
        warm.search(queries[:8], min(args.k, 1000))
        del warm
        threads["faiss_omp"] = faiss.omp_get_max_threads()

    baseline = proc_status_kib("VmRSS")
    peak_before = proc_status_kib("VmHWM")
    index = None
    start = time.perf_counter()
    if method == "faiss-flat":
        index = faiss.IndexFlatIP(args.dim)
        index.add(corpus)
    elif method in ("hnsw", "ivfpq"):
        index = build_ann_index(corpus, method, settings, seed=args.seed)
    build_seconds = time.perf_counter() - start
    rss_after_build = proc_status_kib("VmRSS")
    peak_after_build = proc_status_kib("VmHWM")

    searches = []
    for value in values:
        if method == "exact":
            search = lambda q: exact_search(q, corpus, args.k)  # noqa: E731
        else:
            set_search_settings(index, method, {**settings, **value})
            refine = value.get("refine", 0)
            search = lambda q, r=refine: ann_search(index, q, args.k, embeddings=corpus, refine=r)  # noqa: E731
        search(queries[:10])  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, rows = search(queries)
            seconds.append(time.perf_counter() - start)
        tag = "".join(f"-{key}{number}" for key, number in value.items())
        name = EXACT_ROWS_FILE if method == "exact" else f"rows-{method}{tag}.npy"
        np.save(args.work_dir / name, rows, allow_pickle=False)
        searches.append({**value, "seconds": seconds, "rows_file": name})
    peak = proc_status_kib("VmHWM")

    index_bytes = 0
    if index is not None:
        import faiss

        index_bytes = int(faiss.serialize_index(index).nbytes)
    result = {
        "method": method,
        "settings": settings,
        "build_seconds": build_seconds,
        "searches": searches,
        "baseline_kib": baseline,
        "peak_before_kib": peak_before,
        "rss_after_build_kib": rss_after_build,
        "peak_after_build_kib": peak_after_build,
        "peak_kib": peak,
        "extra_kib": peak - baseline,
        "index_bytes": index_bytes,
        "threads": threads,
    }
    print(json.dumps(result))


def child_command(args: argparse.Namespace, method: str) -> list[str]:
    command = [sys.executable, __file__, "--only", method]
    for name in ("num_docs", "num_queries", "dim", "k", "num_clusters", "spread", "seed", "work_dir"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in ("hnsw_m", "ef_construction", "nlist", "pq_m"):
        if getattr(args, name) is not None:
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in ("ef_search", "nprobe", "refine"):
        if getattr(args, name) is not None:
            command += [f"--{name.replace('_', '-')}", *map(str, getattr(args, name))]
    return command + ["--repeats", str(args.repeats)]


def run_method(args: argparse.Namespace, method: str) -> dict[str, Any]:
    done = subprocess.run(child_command(args, method), capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {method} child process failed (exit status {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["peak_kib"] <= result["peak_before_kib"]:  # stayed under the high-water mark of the loading
        result["warning"] = "build and search did not pass the peak reached before them; the extra is a bound"
    return result


def describe(result: dict[str, Any], search: dict[str, Any]) -> str:
    s, method = result["settings"], result["method"]
    if method == "hnsw":
        return f"m={s['m']} efC={s['ef_construction']} efS={search['ef_search']}"
    if method == "ivfpq":
        return (
            f"nlist={s['nlist']} pq_m={s['pq_m']} nbits={s['nbits']} train={s['train_size']} "
            f"nprobe={search['nprobe']} refine={search['refine']}"
        )
    if method == "exact":
        return f"score blocks {s['max_score_bytes'] // 2**20} MiB"
    return "-"


def main() -> None:
    args = parse_args()
    openblas_threads = set_openblas_threads(args)
    if args.only:
        run_child(args)
        return

    import faiss  # after set_openblas_threads
    import torch

    from sbmoe.retrieval.ann import recall_against_exact

    command = shlex.join([sys.executable, *sys.argv])
    start = time.perf_counter()
    vectors_path, reused = ensure_vectors(args)
    generate_seconds = time.perf_counter() - start

    results = {}
    for method in args.methods:
        print(f"running {method} ...", file=sys.stderr, flush=True)  # the table goes to stdout
        results[method] = run_method(args, method)

    exact_meta = args.work_dir / (EXACT_ROWS_FILE + ".json")
    reference = {**vector_params(args), "k": args.k}
    if "exact" in results:
        exact_meta.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
        reference_source = "this run"
    elif read_json(exact_meta) == reference:
        reference_source = "an earlier run (same vectors and k)"
    else:
        reference_source = None
    exact_rows = np.load(args.work_dir / EXACT_ROWS_FILE, allow_pickle=False) if reference_source else None

    exact_qps = None
    if "exact" in results:
        exact_qps = args.num_queries / statistics.median(results["exact"]["searches"][0]["seconds"])
    table = []
    for method, result in results.items():
        for search in result["searches"]:
            seconds = statistics.median(search["seconds"])
            rows = np.load(args.work_dir / search["rows_file"], allow_pickle=False)
            recall = recall_against_exact(rows, exact_rows) if exact_rows is not None else None
            search["recall"] = recall
            search["median_seconds"] = seconds
            search["queries_per_second"] = args.num_queries / seconds
            search["qps_over_exact"] = search["queries_per_second"] / exact_qps if exact_qps else None
            table.append(
                {
                    "method": method,
                    "settings": describe(result, search),
                    "build_s": result["build_seconds"],
                    "search_s": seconds,
                    "qps": search["queries_per_second"],
                    "qps_over_exact": search["qps_over_exact"],
                    "peak_extra_mib": result["extra_kib"] / 1024,
                    "index_mib": result["index_bytes"] / 2**20,
                    "recall": recall,
                }
            )

    versions = {
        "sbmoe": version("sbmoe"),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    machine = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()}
    print(f"date {datetime.date.today().isoformat()}  " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"{machine['platform']}, {machine['cpus']} CPUs")
    print(f"command: {command}")
    print(
        f"top-{args.k} of {args.num_queries:,} queries over {args.num_docs:,} x {args.dim} float32 unit "
        f"vectors ({args.num_clusters:,} clusters, spread {args.spread}, seed {args.seed}; "
        f"{'reused' if reused else f'generated in {generate_seconds:.1f} s'}: {vectors_path}); "
        f"torch threads {torch.get_num_threads()}, OPENBLAS_NUM_THREADS={openblas_threads}, "
        f"faiss omp threads {faiss.omp_get_max_threads()}; median of {args.repeats} search(es) per setting"
    )
    print()
    print(
        "| method | settings | build s | search s | queries/s | x exact q/s | peak extra MiB | index MiB "
        f"| recall@{args.k} vs exact |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for row in table:
        ratio = f"{row['qps_over_exact']:.2f}" if row["qps_over_exact"] is not None else "-"
        recall = f"{row['recall']:.4f}" if row["recall"] is not None else "-"
        print(
            f"| {row['method']} | {row['settings']} | {row['build_s']:.2f} | {row['search_s']:.3f} "
            f"| {row['qps']:,.0f} | {ratio} | {row['peak_extra_mib']:,.0f} | {row['index_mib']:,.1f} "
            f"| {recall} |"
        )
    print()
    print(
        "peak extra: VmHWM minus VmRSS after loading the vectors, over build and searches; "
        "index: faiss.serialize_index size; recall against exact top-k from "
        + (reference_source or "nowhere (run exact once with these vectors and k)")
    )
    flat = results.get("faiss-flat", {}).get("searches", [{}])[0].get("recall")
    if flat is not None and flat < 0.999:
        print(f"check: faiss-flat recall {flat:.4f} < 0.999; exact and flat search disagree beyond ties")
    for method, result in results.items():
        if "warning" in result:
            print(f"memory ({method}): {result['warning']}")

    if args.json:
        out = {
            "benchmark": "ann_search",
            "date": datetime.date.today().isoformat(),
            "command": command,
            "versions": versions,
            "machine": machine,
            "config": {
                **{k: v for k, v in vars(args).items() if k not in ("json", "only", "work_dir")},
                "work_dir": str(args.work_dir),
                "torch_threads": torch.get_num_threads(),
                "openblas_num_threads": openblas_threads,
                "faiss_omp_threads": faiss.omp_get_max_threads(),
            },
            "vectors": {
                **vector_params(args),
                "path": str(vectors_path),
                "reused": reused,
                "generate_seconds": None if reused else generate_seconds,
            },
            "recall_reference": reference_source,
            "table": table,
            "results": results,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
