"""Peak memory of corpus encoding at two corpus sizes: sbmoe's streaming encoder vs the in-memory way.

The claim under test: `sbmoe encode` / `sbmoe index` write embeddings to a memory map as they are
produced, so their peak memory grows with the embedding matrix (N x H float32) and nothing else of size
N beyond the document ids. The peer is what people write on top of sentence-transformers: read the corpus
into lists, call `SentenceTransformer.encode(texts)` (which returns the whole matrix) and save it.

Set-up (so that a 100k-document corpus encodes in minutes on 2 cores): a random BERT of MiniLM-L6's
width (hidden 384, 12 heads, intermediate 1536) with ONE layer and MiniLM-L6's tokenizer, wrapped by
`sbmoe init` with 6 experts for sbmoe; the same encoder folder for sentence-transformers (mean pooling).
Documents are cut at 32 tokens in both. The encoder's depth and the token limit change the time, not what
is held per document. Corpora: `sbmoe.data.synthetic` collections of N pseudo-word documents (8 to 64
words), written once under --work-dir.

Each (method, N) runs in a fresh child process (this script with --child): it loads the model, records
its resident size (VmRSS), encodes, and reports the high-water mark (VmHWM) minus that baseline: the
extra memory that encoding N documents needed, the corpus text included. Growth between the two sizes
is compared with the growth of the embedding matrix itself.

Usage (the documented configuration is the default):

    .venv/bin/python benchmarks/encode_memory.py [--sizes 50000 200000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import proc_status_kib

METHODS = ("sbmoe", "sentence-transformers")
HIDDEN = 384
MAX_LENGTH = 32  # tokens per document: keeps the run short; what is held per document does not depend on it


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[50_000, 200_000], metavar=("N1", "N2"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/sbmoe-encode-memory"))
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    return parser.parse_args()


def prepare(work: Path, sizes: list[int]) -> None:
    """The one-layer encoder, its SB-MoE wrapping, and the synthetic corpora (kept between runs)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sbmoe.commands import main as sbmoe
    from sbmoe.data.synthetic import write_synthetic_collection
    from sbmoe.modeling.loading import resolve_model_name

    encoder = work / "encoder"
    if not (encoder / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_name("minilm-l6"))
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=12,
            intermediate_size=1536,
        )
        BertModel(config).save_pretrained(encoder)
        tokenizer.save_pretrained(encoder)
    if not (work / "sbmoe-model" / "config.json").exists():
        shutil.rmtree(work / "sbmoe-model", ignore_errors=True)
        sbmoe(
            ["init", "--base", str(encoder), "--output", str(work / "sbmoe-model"), "--num-experts", "6"]
            + ["--document-max-length", str(MAX_LENGTH)]
        )
    for n in sizes:
        if not (work / f"corpus-{n}" / "corpus.jsonl").exists():
            shutil.rmtree(work / f"corpus-{n}", ignore_errors=True)
            write_synthetic_collection(work / f"corpus-{n}", n, 0, seed=0)


def child(method: str, n: int, work: Path, batch_size: int) -> dict[str, Any]:
    corpus_path = work / f"corpus-{n}" / "corpus.jsonl"
    output = work / f"out-{method}-{n}"
    shutil.rmtree(output, ignore_errors=True)
    if method == "sbmoe":
        from sbmoe.modeling import load_model
        from sbmoe.retrieval.index import encode_shard, merge_shards

        model, tokenizer = load_model(work / "sbmoe-model")
        baseline = proc_status_kib("VmRSS")
        start = time.perf_counter()
        encode_shard(
            model, tokenizer, corpus_path, output, model_name="bench", batch_size=batch_size, progress=False
        )
        merge_shards(output, progress=False)
    else:
        import numpy as np
        from sentence_transformers import SentenceTransformer

        from sbmoe.data import load_corpus

        model = SentenceTransformer(str(work / "encoder"), device="cpu")
        model.max_seq_length = MAX_LENGTH
        baseline = proc_status_kib("VmRSS")
        start = time.perf_counter()
        corpus = load_corpus(corpus_path)
        embeddings = model.encode(corpus.document_texts(), batch_size=batch_size, convert_to_numpy=True)
        output.mkdir(parents=True)
        np.save(output / "embeddings.npy", embeddings)
        (output / "ids.json").write_text(json.dumps(corpus.ids))
    seconds = time.perf_counter() - start
    peak = proc_status_kib("VmHWM")
    shutil.rmtree(output, ignore_errors=True)
    return {
        "method": method,
        "n": n,
        "seconds": seconds,
        "baseline_kib": baseline,
        "extra_kib": peak - baseline,
    }


def run_child(args: argparse.Namespace, method: str, n: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", method, str(n), "--work-dir", str(args.work_dir)]
    command += ["--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {method} {n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        method, n = args.child[0], int(args.child[1])
        print(json.dumps(child(method, n, args.work_dir, args.batch_size)))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    prepare(args.work_dir, args.sizes)
    n1, n2 = args.sizes
    results = {m: {n: run_child(args, m, n) for n in (n1, n2)} for m in METHODS}
    matrix_growth_mib = (n2 - n1) * HIDDEN * 4 / 2**20
    lines = [
        f"| method | extra peak at {n1:,} docs (MiB) | at {n2:,} docs (MiB) | growth (MiB) "
        f"| growth / matrix growth ({matrix_growth_mib:.0f} MiB) |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for method in METHODS:
        small, large = (results[method][n]["extra_kib"] / 1024 for n in (n1, n2))
        growth = large - small
        summary[method] = {"growth_mib": growth, "growth_over_matrix": growth / matrix_growth_mib}
        lines.append(
            f"| {method} | {small:.0f} | {large:.0f} | {growth:.0f} | {growth / matrix_growth_mib:.2f} |"
        )
    ratio = summary["sentence-transformers"]["growth_mib"] / summary["sbmoe"]["growth_mib"]
    lines.append("")
    lines.append(f"memory growth, sentence-transformers over sbmoe: {ratio:.2f}x")
    command = "python benchmarks/encode_memory.py " + " ".join(sys.argv[1:])
    lines.append(f"command: {command.strip()}")
    print("\n".join(lines))
    if args.json:
        versions = {p: version(p) for p in ("sbmoe", "torch", "transformers", "sentence-transformers")}
        record = {
            "results": results,
            "summary": summary,
            "matrix_growth_mib": matrix_growth_mib,
            "growth_ratio_peer_over_sbmoe": ratio,
            "versions": versions,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "command": command,
        }
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
