"""A frozen-encoder expert-count sweep: how long it takes on this CPU, and what it finds.

For N in {3, 6, 9, 12} and both variants (faithful, learned): `train` with --freeze-encoder on a
collection's training split, then `evaluate` on its test split in modes top1 and all. The encoder's pooled
vectors are computed once (timed separately, as "warm-up") and every run reuses them from the cache.

Usage: python benchmarks/frozen_sweep.py [--dataset scifact] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sbmoe.analysis.routing import active_experts
from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate
from sbmoe.training.config import TrainingConfig
from sbmoe.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--experts", default="3,6,9,12")
    parser.add_argument("--variants", default="faithful,learned")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def run(variant: str, experts: int) -> dict:
            folder = tmp / f"{variant}-{experts}"
            started = time.perf_counter()
            summary = train(
                TrainingConfig(
                    base="minilm-l6",
                    dataset=args.dataset,
                    data_dir=args.data_dir,
                    output_dir=str(folder),
                    system="sbmoe",
                    variant=variant,
                    num_experts=experts,
                    freeze_encoder=True,
                    epochs=args.epochs,
                    progress=False,
                )  # fmt: skip
            )
            trained = time.perf_counter()
            results = evaluate(
                EvaluateSettings(
                    model=str(folder),
                    dataset=args.dataset,
                    data_dir=args.data_dir,
                    output_dir=str(folder / "eval"),
                    modes=("top1", "all"),
                    progress=False,
                )  # fmt: skip
            )
            done = time.perf_counter()
            return {
                "variant": variant,
                "num_experts": experts,
                "train_seconds": round(trained - started, 1),
                "evaluate_seconds": round(done - trained, 1),
                "epochs_run": summary["epochs_run"],
                "best_epoch": summary["best_epoch"],
                **{f"{r['mode']} ndcg@10": round(r["ndcg@10"], 4) for r in results},
                **{f"{r['mode']} recall@100": round(r["recall@100"], 4) for r in results},
                "active_experts_top1": active_experts(results[0]["expert_counts"]["documents"]),
            }

        warm_start = time.perf_counter()
        run("learned", 1)  # encodes the corpus and queries once; the sweep below reuses them
        warm_up = time.perf_counter() - warm_start
        sweep_start = time.perf_counter()
        for variant in args.variants.split(","):
            for experts in (int(n) for n in args.experts.split(",")):
                rows.append(run(variant, experts))
                print(json.dumps(rows[-1]))
        sweep = time.perf_counter() - sweep_start

    print(f"\nwarm-up (encoding {args.dataset} once, then one run): {warm_up:.0f} s")
    print(f"sweep of {len(rows)} runs (train + evaluate top1 and all): {sweep:.0f} s ({sweep / 60:.1f} min)")
    header = [
        "variant",
        "N",
        "epochs",
        "train s",
        "eval s",
        "top1 nDCG@10",
        "all nDCG@10",
        "top1 R@100",
        "active",
    ]
    print(" | ".join(header))
    for r in rows:
        cells = [r["variant"], r["num_experts"], r["epochs_run"], r["train_seconds"], r["evaluate_seconds"]]
        cells += [r["top1 ndcg@10"], r["all ndcg@10"], r["top1 recall@100"], r["active_experts_top1"]]
        print(" | ".join(str(cell) for cell in cells))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"warm_up_seconds": warm_up, "sweep_seconds": sweep, "runs": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
