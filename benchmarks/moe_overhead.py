"""What the SB-MoE block costs at inference, measured side by side in one process.

1. Corpus encoding with the packaged MiniLM-L6: the plain encoder vs the same encoder with an N=12 block
   (encoder + pooling + head for both), interleaved repeats, median texts/s and the ratio.
2. `evaluate` with routing modes top1 and all together vs top1 alone (no embedding cache, so each run
   encodes the corpus): the ratio of wall times.

Usage: python benchmarks/moe_overhead.py [--data-dir ../shared/datasets] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sbmoe.data import load_dataset
from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate
from sbmoe.modeling import build_model, load_model, save_model
from sbmoe.retrieval.encode import apply_head, encode_pooled


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def encoding_overhead(texts: list[str], repeats: int, num_experts: int) -> dict:
    plain, tokenizer = load_model("minilm-l6")
    with_block, _ = build_model("minilm-l6", num_experts=num_experts, variant="learned")

    def run(model):
        return apply_head(model, encode_pooled(model, tokenizer, texts, "document", progress=False), "top1")

    run(plain)  # warm-up
    times = {"plain": [], f"sbmoe N={num_experts}": []}
    for _ in range(repeats):
        times["plain"].append(timed(lambda: run(plain)))
        times[f"sbmoe N={num_experts}"].append(timed(lambda: run(with_block)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "texts": len(texts),
        "seconds": times,
        "texts_per_second": {name: len(texts) / m for name, m in medians.items()},
        "ratio": medians[f"sbmoe N={num_experts}"] / medians["plain"],
    }


def modes_overhead(dataset: str, data_dir: str, repeats: int, num_experts: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_model(*build_model("minilm-l6", num_experts=num_experts, variant="learned"), model_dir)

        def run(modes: tuple[str, ...]) -> float:
            settings = EvaluateSettings(
                model=str(model_dir), dataset=dataset, data_dir=data_dir, output_dir=str(Path(tmp) / "out"),
                use_cache=False, progress=False, modes=modes,
            )  # fmt: skip
            return timed(lambda: evaluate(settings))

        times = {"top1": [], "top1,all": []}
        for _ in range(repeats):
            times["top1"].append(run(("top1",)))
            times["top1,all"].append(run(("top1", "all")))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"dataset": dataset, "seconds": times, "ratio": medians["top1,all"] / medians["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )
    parser.add_argument("--encode-dataset", default="scifact")
    parser.add_argument("--num-texts", type=int, default=1000, help="documents encoded per repeat")
    parser.add_argument("--modes-dataset", default="cranfield")
    parser.add_argument("--num-experts", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    texts = load_dataset(args.encode_dataset, args.data_dir).corpus.document_texts()[: args.num_texts]
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "encoding": encoding_overhead(texts, args.repeats, args.num_experts),
        "modes": modes_overhead(args.modes_dataset, args.data_dir, args.repeats, args.num_experts),
    }
    encoding, modes = results["encoding"], results["modes"]
    print(f"torch {results['torch']}, {results['threads']} threads")
    print(f"corpus encoding, {encoding['texts']} {args.encode_dataset} documents, median texts/s:")
    for name, rate in encoding["texts_per_second"].items():
        print(f"  {name:<14} {rate:8.1f}")
    print(f"  ratio (block/plain time): {encoding['ratio']:.3f}   target <= 1.03")
    one, two = (statistics.median(modes["seconds"][name]) for name in ("top1", "top1,all"))
    print(f"evaluate on {args.modes_dataset}, median seconds: top1 {one:.1f}, top1+all {two:.1f}")
    print(f"  ratio (two modes/one): {modes['ratio']:.3f}   target <= 1.10")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
