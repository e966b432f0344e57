"""Full fine-tuning quality: `sbmoe train --system finetune` with its defaults against
sentence-transformers' trainer (MultipleNegativesRankingLoss), side by side, on SciFact.

Both start from the packaged all-MiniLM-L6-v2, train on SciFact's training split with the same batch size,
max length and number of epochs, and are scored by the same evaluator (`sbmoe evaluate`, which reads the
sentence-transformers folder with its own pooling and normalisation) on SciFact test.

The peer is set up as a practitioner would: MNRL (scale 20 = temperature 0.05), the NO_DUPLICATES batch
sampler, learning rate 2e-5 with 10 % warm-up and linear decay, every (query, relevant document) pair of the
training split. sbmoe holds 5 % of the training queries out for validation and draws one positive per query.

Needs the bench extra (datasets, accelerate): pip install -e '.[bench]'
Usage: python benchmarks/finetune_quality_vs_sentence_transformers.py [--seeds 1] [--json OUT]
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
from sbmoe.modeling import resolve_model_name
from sbmoe.training.config import resolve_config
from sbmoe.training.trainer import train


def test_scores(model: Path, data_dir: str, output: Path) -> dict[str, float]:
    [result] = evaluate(
        EvaluateSettings(
            model=str(model), dataset="scifact", split="test", data_dir=data_dir, output_dir=str(output),
            top_k=100, progress=False,
        )
    )  # fmt: skip
    return {"ndcg@10": result["ndcg@10"], "recall@100": result["recall@100"]}


def run_sbmoe(data_dir: str, output: Path, seed: int) -> tuple[dict, dict]:
    """`sbmoe train --base minilm-l6 --dataset scifact --system finetune --seed S` with every default."""
    config = resolve_config(
        {},
        {"base": "minilm-l6", "dataset": "scifact", "data_dir": data_dir, "system": "finetune",
         "seed": seed, "output_dir": str(output), "progress": False},
    )  # fmt: skip
    train(config)
    return config.to_dict(), test_scores(output, data_dir, output.parent / "sbmoe-eval")


def run_sentence_transformers(
    data_dir: str, output: Path, seed: int, batch_size: int, max_length: int, epochs: int, lr: float
) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    from sentence_transformers.training_args import BatchSamplers

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    source = load_dataset("scifact", data_dir)
    texts = dict(zip(source.corpus.ids, source.corpus.document_texts(), strict=True))
    pairs = [
        (source.queries[q], texts[d])
        for q, judged in source.qrels("train").items()
        for d, grade in judged.items()
        if grade > 0 and d in texts
    ]
    model = SentenceTransformer(resolve_model_name("minilm-l6"), device="cpu")
    model.max_seq_length = max_length
    data = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
    arguments = Arguments(
        output_dir=str(output / "trainer"), per_device_train_batch_size=batch_size, num_train_epochs=epochs,
        learning_rate=lr, warmup_ratio=0.1, lr_scheduler_type="linear", seed=seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none",
        logging_steps=10_000, disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    SentenceTransformerTrainer(model=model, args=arguments, train_dataset=data, loss=loss).train()
    model.save(str(output / "model"))
    return test_scores(output / "model", data_dir, output / "eval")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--peer-lr", type=float, default=2e-5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    rows: dict[str, list[dict]] = {"sbmoe": [], "sentence-transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            folder = Path(tmp) / f"seed{seed}"
            started = time.perf_counter()
            config, scores = run_sbmoe(args.data_dir, folder / "sbmoe", seed)
            rows["sbmoe"].append({"seed": seed, **scores, "seconds": time.perf_counter() - started})
            print(json.dumps({"sbmoe": rows["sbmoe"][-1]}), flush=True)  # kept if the peer fails
            started = time.perf_counter()
            scores = run_sentence_transformers(
                args.data_dir, folder / "st", seed, config["batch_size"], config["document_max_length"]
                or 256, config["epochs"], args.peer_lr,
            )  # fmt: skip
            rows["sentence-transformers"].append(
                {"seed": seed, **scores, "seconds": time.perf_counter() - started}
            )
            print(json.dumps({"sentence-transformers": rows["sentence-transformers"][-1]}), flush=True)
    summary = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sbmoe_config": config,
        "peer": {"loss": "MultipleNegativesRankingLoss(scale=20)", "lr": args.peer_lr, "warmup_ratio": 0.1,
                 "schedule": "linear", "batch_sampler": "NO_DUPLICATES"},
        "runs": rows,
    }  # fmt: skip
    summary["mean_ndcg@10"] = {name: statistics.mean(r["ndcg@10"] for r in rows[name]) for name in rows}
    print(f"torch {summary['torch']}, {summary['threads']} threads; SciFact test, seeds {args.seeds}")
    for name, values in rows.items():
        ndcg = ", ".join(f"{r['ndcg@10']:.4f}" for r in values)
        print(f"  {name:<22} nDCG@10 {ndcg}  (mean {summary['mean_ndcg@10'][name]:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
