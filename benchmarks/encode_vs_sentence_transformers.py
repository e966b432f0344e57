"""Corpus encoding speed: sbmoe vs sentence-transformers, same model, same texts, one process.

Both sides encode the same documents with the same all-MiniLM-L6-v2 folder (mean pooling, normalised,
max length 256 as the folder's own settings say, batch 32):

* sbmoe: ``apply_head(model, encode_pooled(model, tokenizer, texts, "document"))``
* sentence-transformers: ``SentenceTransformer(folder, device="cpu").encode(texts, ...)``

Each timing covers the whole call (tokenisation, batching, inference, pooling, normalisation). After one
warm-up call per method, the measured calls are interleaved (A B A B ...) so that a slow spell of the
shared machine hits both alike; the report gives each method's median and the ratio of the medians.

Usage (the documented configuration is the default):

    .venv/bin/python benchmarks/encode_vs_sentence_transformers.py [--num-docs 1000] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

from sbmoe.data import load_dataset
from sbmoe.modeling import load_model, resolve_model_name
from sbmoe.retrieval.encode import apply_head, encode_pooled

TARGET_RATIO = 1.0  # sbmoe passages/s over sentence-transformers passages/s


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6", help="model alias or sentence-transformers folder")
    parser.add_argument("--dataset", default="scifact", help="BEIR collection whose corpus is encoded")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SBMOE_DATA", "/work/shared/datasets"),
        help="folder holding the collections (default: $SBMOE_DATA or /work/shared/datasets)",
    )
    parser.add_argument("--num-docs", type=int, default=1000, help="encode the first N documents")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="measured calls per method (interleaved)")
    parser.add_argument("--warmup-docs", type=int, default=64, help="documents in each warm-up call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write results as JSON")
    return parser.parse_args()


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    texts = load_dataset(args.dataset, args.data_dir).corpus.document_texts()[: args.num_docs]
    folder = resolve_model_name(args.model)

    model, tokenizer = load_model(args.model)
    st_model = SentenceTransformer(folder, device="cpu")
    sbmoe_max_length = model.config.max_length_for("document")
    if st_model.max_seq_length != sbmoe_max_length:
        raise SystemExit(f"max lengths differ: sbmoe {sbmoe_max_length}, ST {st_model.max_seq_length}")
    token_ids = tokenizer(texts, truncation=True, max_length=sbmoe_max_length)["input_ids"]
    lengths = [len(ids) for ids in token_ids]

    def run_sbmoe(batch: list[str]) -> np.ndarray:
        pooled = encode_pooled(
            model, tokenizer, batch, "document", batch_size=args.batch_size, progress=False
        )
        out = apply_head(model, pooled)
        # apply_head returns (embeddings, top experts) since the MoE block; a bare array before it.
        return out[0] if isinstance(out, tuple) else out

    def run_st(batch: list[str]) -> np.ndarray:
        return st_model.encode(
            batch,
            batch_size=args.batch_size,
            normalize_embeddings=False,  # the folder's own Normalize module normalises
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    methods = {"sbmoe": run_sbmoe, "sentence-transformers": run_st}
    for run in methods.values():  # warm-up: first-call allocations, thread pools, lazy imports
        run(texts[: args.warmup_docs])

    seconds: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, run in methods.items():
            elapsed, outputs[name] = timed(lambda run=run: run(texts))
            seconds[name].append(elapsed)

    a, b = outputs["sbmoe"], outputs["sentence-transformers"]
    max_abs_diff = float(np.abs(a - b).max())
    rate = {name: len(texts) / statistics.median(values) for name, values in seconds.items()}
    ratio = rate["sbmoe"] / rate["sentence-transformers"]

    versions = {
        "sbmoe": _version("sbmoe"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    print(f"date {datetime.date.today().isoformat()}  " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"{len(texts)} {args.dataset} documents (tokens: mean {statistics.mean(lengths):.1f}, "
        f"max {max(lengths)}), max length {sbmoe_max_length}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats after a warm-up"
    )
    print()
    print(f"{'method':<24}{'median s':>10}{'passages/s':>12}   all runs (s)")
    for name, values in seconds.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<24}{statistics.median(values):>10.2f}{rate[name]:>12.1f}   {runs}")
    print()
    verdict = "met" if ratio >= TARGET_RATIO else f"missed by {(TARGET_RATIO - ratio) * 100:.1f} %"
    print(f"speed ratio sbmoe / ST: {ratio:.3f}x  (target >= {TARGET_RATIO:.1f}x: {verdict})")
    print(f"max |sbmoe - ST| over the {a.shape[0]} x {a.shape[1]} embeddings: {max_abs_diff:.2e}")

    if args.json:
        result = {
            "benchmark": "encode_vs_sentence_transformers",
            "date": datetime.date.today().isoformat(),
            "versions": versions,
            "config": {
                "model": args.model,
                "dataset": args.dataset,
                "num_docs": len(texts),
                "batch_size": args.batch_size,
                "max_length": sbmoe_max_length,
                "repeats": args.repeats,
                "torch_threads": torch.get_num_threads(),
                "mean_tokens": statistics.mean(lengths),
            },
            "seconds": seconds,
            "passages_per_second": rate,
            "ratio_sbmoe_over_st": ratio,
            "target_ratio": TARGET_RATIO,
            "target_met": ratio >= TARGET_RATIO,
            "max_abs_diff": max_abs_diff,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
