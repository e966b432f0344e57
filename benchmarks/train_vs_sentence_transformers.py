"""Training throughput: `sbmoe train` vs sentence-transformers' trainer with MultipleNegativesRankingLoss.

Same base (the packaged all-MiniLM-L6-v2), batch size, max length (256), temperature (0.05 = MNRL's scale
20), the same SciFact training queries and positives, full fine-tuning on this CPU. Each run trains a
fixed number of steps; the time per step is measured from the end of step `--warmup` to the end of the
last step (data loading, tokenisation, forward, backward and optimiser step included on both sides).
Also: sbmoe with the SB-MoE block (N experts) vs sbmoe without it, for the block's per-step cost.
Runs alternate (ST, sbmoe, sbmoe+MoE, repeated) in one process.

Compute precision: `--dtype bfloat16` runs every side's forward under bfloat16 autocast (sbmoe:
`TrainingConfig(dtype="bfloat16")`; sentence-transformers: `bf16=True` in its training arguments);
weights and optimiser state stay float32 on both. `--dtype-comparison` adds, in each repeat, an sbmoe
finetune run in the other dtype, and reports sbmoe's bfloat16 pairs/s over its float32 pairs/s (target
>= 2x). bfloat16 is fast only on CPUs with AMX or AVX512-BF16 (the report prints what torch sees);
elsewhere it is emulated and several times slower than float32.

Needs the bench extra: pip install -e '.[bench]'
Usage: python benchmarks/train_vs_sentence_transformers.py [--steps 12] [--repeats 2] [--json OUT]
       python benchmarks/train_vs_sentence_transformers.py --dtype-comparison [--dtype bfloat16] [--json OUT]
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
from _common import cpu_report

from sbmoe.data import load_dataset
from sbmoe.modeling import resolve_model_name
from sbmoe.training.config import TrainingConfig
from sbmoe.training.trainer import train

TARGET_BF16_SPEEDUP = 2.0  # sbmoe bfloat16 pairs/s over sbmoe float32 pairs/s (--dtype-comparison)


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


def labelled(name: str, dtype: str) -> str:
    """A run's name in the report: as before the dtype option for float32, suffixed for bfloat16."""
    return name if dtype == "float32" else f"{name} {dtype}"


def run_sbmoe(
    dataset: Path, output: Path, batch_size: int, steps: int, warmup: int, system: str, experts: int,
    dtype: str = "float32",
):  # fmt: skip
    config = TrainingConfig(
        base="minilm-l6", dataset=str(dataset), output_dir=str(output), system=system, num_experts=experts,
        batch_size=batch_size, epochs=1, temperature=0.05, encoder_lr=2e-5, moe_lr=1e-4, progress=False,
        validation_documents=50, query_max_length=256, document_max_length=256, dtype=dtype,
    )  # fmt: skip
    train(config)
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    times = [record["time"] for record in log if record["type"] == "step"]
    assert len(times) == steps, f"expected {steps} steps, got {len(times)}"
    return seconds_per_step(times, warmup)


def run_sentence_transformers(
    pairs, output: Path, batch_size: int, steps: int, warmup: int, bf16: bool = False
) -> float:
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
        disable_tqdm=True, use_cpu=True, bf16=bf16,
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
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="compute dtype of every run's forward (bfloat16: autocast on both sides)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype-comparison", action="store_true",
        help="also run sbmoe finetune in the other dtype each repeat; report bfloat16 / float32 pairs/s",
    )  # fmt: skip
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps: time is measured from the end of step --warmup")

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    source = load_dataset("scifact", args.data_dir)
    cpu = cpu_report()
    other_dtype = "bfloat16" if args.dtype == "float32" else "float32"
    st_name = labelled("sentence-transformers MNRL", args.dtype)
    plain_name = labelled("sbmoe finetune", args.dtype)
    other_name = labelled("sbmoe finetune", other_dtype)
    moe_name = labelled(f"sbmoe SB-MoE N={args.num_experts}", args.dtype)
    results: dict[str, list[float]] = {st_name: [], plain_name: []}
    if args.dtype_comparison:
        results[other_name] = []
    results[moe_name] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_subset(source, tmp / "subset", args.batch_size * args.steps, 8)
        for repeat in range(args.repeats):
            out = tmp / f"r{repeat}"

            def sbmoe(folder: str, system: str, experts: int, dtype: str, out: Path = out) -> float:
                return run_sbmoe(
                    tmp / "subset", out / folder, args.batch_size, args.steps, args.warmup, system, experts,
                    dtype,
                )  # fmt: skip

            results[st_name].append(
                run_sentence_transformers(
                    pairs, out / "st", args.batch_size, args.steps, args.warmup, bf16=args.dtype == "bfloat16"
                )
            )
            results[plain_name].append(sbmoe("plain", "finetune", 1, args.dtype))
            if args.dtype_comparison:
                results[other_name].append(sbmoe("plain-other", "finetune", 1, other_dtype))
            results[moe_name].append(sbmoe("moe", "sbmoe", args.num_experts, args.dtype))
    medians = {name: statistics.median(values) for name, values in results.items()}
    st, plain, moe = medians[st_name], medians[plain_name], medians[moe_name]
    summary = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "dtype": args.dtype,
        "cpu": cpu,
        "seconds_per_step": results,
        "pairs_per_second": {name: args.batch_size / m for name, m in medians.items()},
        "sbmoe_vs_st_throughput": st / plain,
        "moe_step_overhead": moe / plain,
    }
    if args.dtype_comparison:
        by_dtype = {args.dtype: plain, other_dtype: medians[other_name]}
        speedup = by_dtype["float32"] / by_dtype["bfloat16"]  # pairs/s ratio = inverse step-time ratio
        summary["sbmoe_bfloat16_over_float32_throughput"] = speedup
        summary["target_bfloat16_over_float32"] = TARGET_BF16_SPEEDUP
        summary["target_bfloat16_over_float32_met"] = speedup >= TARGET_BF16_SPEEDUP
    print(
        f"torch {summary['torch']}, {summary['threads']} threads, batch {args.batch_size}, "
        f"{args.steps} steps, dtype {args.dtype}"
    )
    print(
        f"cpu {cpu['model_name']}, AMX tile {cpu['amx_tile']}, AVX512-BF16 {cpu['avx512_bf16']}, "
        f"dtype auto -> {cpu['auto_dtype']}"
    )
    width = max(28, *(len(name) for name in summary["pairs_per_second"]))
    for name, rate in summary["pairs_per_second"].items():
        print(f"  {name:<{width}} {rate:6.2f} pairs/s  (median of {args.repeats})")
    print(
        f"  sbmoe / sentence-transformers throughput: {summary['sbmoe_vs_st_throughput']:.3f}   target >= 1.0"
    )
    print(f"  SB-MoE step time / plain step time:       {summary['moe_step_overhead']:.3f}   target <= 1.03")
    if args.dtype_comparison:
        speedup = summary["sbmoe_bfloat16_over_float32_throughput"]
        verdict = "met" if speedup >= TARGET_BF16_SPEEDUP else "missed"
        print(
            f"  sbmoe bfloat16 / float32 throughput:      {speedup:.3f}   "
            f"target >= {TARGET_BF16_SPEEDUP:.1f} ({verdict})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
