"""Retrieval quality under bfloat16: nDCG@10 with the encoder in float32 vs bfloat16 autocast.

For each collection (default: the ten under $SBMOE_DATA or /work/shared/datasets), `sbmoe evaluate`'s
function runs twice with the packaged all-MiniLM-L6-v2 ("minilm-l6"), test split, top 100, once per
compute dtype:

    evaluate(EvaluateSettings(model="minilm-l6", dataset=name, data_dir=..., split="test", top_k=100,
                              dtype=D, output_dir=<temporary>, progress=False))   for D in float32, bfloat16

bfloat16 runs the encoder's forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights,
pooled vectors, search and metrics stay float32). The embedding cache is used as `sbmoe evaluate` uses
it: float32 corpus embeddings are likely cached already; bfloat16 has its own cache key, so its first
run encodes every corpus. The report is a Markdown table: collection, nDCG@10 in each dtype, the
difference (bfloat16 - float32) and whether it is within the tolerance (|difference| <= 0.002).

bfloat16 is fast only on CPUs with AMX or AVX512-BF16; elsewhere torch emulates it and encoding is
several times slower than float32. This measures quality only, but the CPU's bfloat16 kernels (AMX,
AVX512-BF16 or emulation) may round differently, so the report records which the CPU has.

Usage (the documented configuration is the default):

    .venv/bin/python benchmarks/ndcg_float32_vs_bfloat16.py [--datasets scifact adi ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers
from _common import cpu_report

from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate
from sbmoe.modeling import load_model

DATASETS = (
    "scifact", "nfcorpus-preproc", "arguana", "cranfield", "cisi", "medline", "adi", "cacm", "npl", "lisa",
)  # fmt: skip
DTYPES = ("float32", "bfloat16")
METRIC = "ndcg@10"
TOLERANCE = 0.002  # |nDCG@10 bfloat16 - nDCG@10 float32|


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        help="collections to evaluate, space- or comma-separated (default: all ten)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SBMOE_DATA", "/work/shared/datasets"),
        help="folder holding the collections (default: $SBMOE_DATA or /work/shared/datasets)",
    )
    parser.add_argument("--model", default="minilm-l6", help="model alias or folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="allowed |nDCG@10 difference|")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default: sbmoe's own)")
    parser.add_argument("--no-cache", action="store_true", help="encode everything, write no cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write results as JSON")
    args = parser.parse_args()
    args.datasets = [name for given in args.datasets for name in given.split(",") if name]
    return args


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    loaded = load_model(args.model)  # one load for every run: the settings' model names it

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sbmoe-ndcg-dtype-") as tmp:
        for name in args.datasets:
            row: dict = {"dataset": name}
            for dtype in DTYPES:
                settings = EvaluateSettings(
                    model=args.model, dataset=name, data_dir=args.data_dir, split=args.split,
                    top_k=args.top_k, dtype=dtype, output_dir=str(Path(tmp) / name / dtype),
                    progress=False, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                )  # fmt: skip
                start = time.perf_counter()
                summary = evaluate(settings, loaded=loaded)[0]
                seconds = time.perf_counter() - start
                row[dtype] = {
                    METRIC: summary[METRIC],
                    "dtype": summary["dtype"],
                    "num_queries": summary["num_queries"],
                    "corpus_from_cache": summary["corpus_from_cache"],
                    "corpus_encoding_seconds": summary["seconds"]["corpus_encoding"],
                    "seconds": round(seconds, 3),
                }
                source = "cached" if summary["corpus_from_cache"] else "encoded"
                print(
                    f"{name} {dtype}: {METRIC} {summary[METRIC]:.4f}  ({summary['num_queries']} queries, "
                    f"corpus {source}, {seconds:.1f} s)",
                    flush=True,
                )
            row["difference"] = row["bfloat16"][METRIC] - row["float32"][METRIC]
            row["within_tolerance"] = abs(row["difference"]) <= args.tolerance
            rows.append(row)

    versions = {
        "sbmoe": _version("sbmoe"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    print()
    print(f"date {datetime.date.today().isoformat()}  " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    cpu = cpu_report()
    print(f"cpu {cpu['model_name']}  AMX tile {cpu['amx_tile']}  AVX512-BF16 {cpu['avx512_bf16']}")
    print(
        f"model {args.model}, split {args.split}, top {args.top_k}, torch threads {torch.get_num_threads()}"
    )
    print()
    print(f"| collection | nDCG@10 float32 | nDCG@10 bfloat16 | difference | within {args.tolerance:g} |")
    print("|---|---:|---:|---:|:---:|")
    for row in rows:
        print(
            f"| {row['dataset']} | {row['float32'][METRIC]:.4f} | {row['bfloat16'][METRIC]:.4f} "
            f"| {row['difference']:+.4f} | {'yes' if row['within_tolerance'] else 'no'} |"
        )
    within = sum(row["within_tolerance"] for row in rows)
    print()
    print(f"{within} of {len(rows)} collections within |difference| <= {args.tolerance:g}")

    if args.json:
        result = {
            "benchmark": "ndcg_float32_vs_bfloat16",
            "date": datetime.date.today().isoformat(),
            "versions": versions,
            "cpu": cpu,
            "config": {
                "model": args.model,
                "split": args.split,
                "top_k": args.top_k,
                "metric": METRIC,
                "tolerance": args.tolerance,
                "torch_threads": torch.get_num_threads(),
                "use_cache": not args.no_cache,
            },
            "collections": rows,
            "all_within_tolerance": within == len(rows),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
