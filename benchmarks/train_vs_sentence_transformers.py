"""Training throughput: `sbmoe train` vs sentence-transformers' trainer with MultipleNegativesRankingLoss.

Same base (the packaged all-MiniLM-L6-v2), batch size, max length (256), temperature (0.05 = MNRL's scale
20), the same SciFact training queries and positives, full fine-tuning on this CPU. Each run trains a
fixed number of steps; the time per step is measured from the end of step `--warmup` to the end of the
last step (data loading, tokenisation, forward, backward and optimiser step included on both sides).
Also: sbmoe with the SB-MoE block (N experts) vs sbmoe without it, for the block's per-step cost.
Runs alternate (ST, sbmoe, sbmoe+MoE, repeated) in one process.

Needs the bench extra: pip install -e '.[bench]'
Usage: python benchmarks/train_vs_sentence_transformers.py [--steps 12] [--repeats 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sbmoe.data import load_dataset
from sbmoe.modeling import resolve_model_name
from sbmoe.training.config import TrainingConfig
from sbmoe.training.trainer import train


def make_subset(source, folder: Path, num_train: int, num_dev: int) -> list[tuple[str, str]]:
    """A BEIR folder sharing SciFact's corpus and queries, with `num_train` training and `num_dev` dev
    queries; returns the (query text, first positive text) training pairs."""
    folder.mkdir(parents=True)
    for name in ("corpus.jsonl.gz", "queries.jsonl"):
        os.symlink(source.path / name, folder / name)
    qrels = source.qrels("train")
    ids = list(qrels)
    (folder / "qrels").mkdir()
    header = "query-id\tcorpus-id\tscore\n"
    for split, chosen in (("train", ids[:num_train]), ("dev", ids[num_train : num_train + num_dev])):
        rows = "".join(f"{q}\t{d}\t{g}\n" for q in chosen for d, g in qrels[q].items())
        (folder / "qrels" / f"{split}.tsv").write_text(header + rows)
    texts = dict(zip(source.corpus.ids, source.corpus.document_texts(), strict=True))
    return [(source.queries[q], texts[next(iter(qrels[q]))]) for q in ids[:num_train]]


def seconds_per_step(step_end_times: list[float], warmup: int) -> float:
    measured = step_end_times[warmup - 1 :]
    return (measured[-1] - measured[0]) / (len(measured) - 1)


def run_sbmoe(
    dataset: Path, output: Path, batch_size: int, steps: int, warmup: int, system: str, experts: int
):
    config = TrainingConfig(
        base="minilm-l6", dataset=str(dataset), output_dir=str(output), system=system, num_experts=experts,
        batch_size=batch_size, epochs=1, temperature=0.05, encoder_lr=2e-5, moe_lr=1e-4, progress=False,
        validation_documents=50, query_max_length=256, document_max_length=256,
    )  # fmt: skip
    train(config)
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    times = [record["time"] for record in log if record["type"] == "step"]
    assert len(times) == steps, f"expected {steps} steps, got {len(times)}"
    return seconds_per_step(times, warmup)


def run_sentence_transformers(pairs, output: Path, batch_size: int, steps: int, warmup: int) -> float:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    model = SentenceTransformer(resolve_model_name("minilm-l6"), device="cpu")
    model.max_seq_length = 256
    data = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
    timer = StepTimes()
    arguments = Arguments(
        output_dir=str(output), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=2e-5,
        save_strategy="no", report_to="none", logging_steps=10_000, dataloader_drop_last=True, seed=42,
        disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    trainer = SentenceTransformerTrainer(
        model=model, args=arguments, train_dataset=data, loss=loss, callbacks=[timer]
    )
    trainer.train()
    assert len(timer.times) == steps
    return seconds_per_step(timer.times, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps not measured")
    parser.add_argument("--num-experts", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    source = load_dataset("scifact", args.data_dir)
    results: dict[str, list[float]] = {"sentence-transformers MNRL": [], "sbmoe finetune": [],
                                       f"sbmoe SB-MoE N={args.num_experts}": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_subset(source, tmp / "subset", args.batch_size * args.steps, 8)
        for repeat in range(args.repeats):
            out = tmp / f"r{repeat}"
            results["sentence-transformers MNRL"].append(
                run_sentence_transformers(pairs, out / "st", args.batch_size, args.steps, args.warmup)
            )
            results["sbmoe finetune"].append(
                run_sbmoe(
                    tmp / "subset", out / "plain", args.batch_size, args.steps, args.warmup, "finetune", 1
                )
            )
            results[f"sbmoe SB-MoE N={args.num_experts}"].append(
                run_sbmoe(
                    tmp / "subset",
                    out / "moe",
                    args.batch_size,
                    args.steps,
                    args.warmup,
                    "sbmoe",
                    args.num_experts,
                )  # fmt: skip
            )
    medians = {name: statistics.median(values) for name, values in results.items()}
    st, plain, moe = medians.values()
    summary = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seconds_per_step": results,
        "pairs_per_second": {name: args.batch_size / m for name, m in medians.items()},
        "sbmoe_vs_st_throughput": st / plain,
        "moe_step_overhead": moe / plain,
    }
    print(
        f"torch {summary['torch']}, {summary['threads']} threads, batch {args.batch_size}, {args.steps} steps"
    )
    for name, rate in summary["pairs_per_second"].items():
        print(f"  {name:<28} {rate:6.2f} pairs/s  (median of {args.repeats})")
    print(
        f"  sbmoe / sentence-transformers throughput: {summary['sbmoe_vs_st_throughput']:.3f}   target >= 1.0"
    )
    print(f"  SB-MoE step time / plain step time:       {summary['moe_step_overhead']:.3f}   target <= 1.03")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
