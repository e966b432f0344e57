"""The untrained encoder's validation nDCG@10 on the hold-out each seed of the clean-protocol sweep validates on
(epoch 0 of its curves): SciFact training queries sharing a positive with test left out, a document-disjoint
tenth held out, the frozen encoder's cached vectors.

    python docs/results/recipe-clean/untrained_validation.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json

from sbmoe.distributed import init_distributed
from sbmoe.modeling import load_model
from sbmoe.modeling.precision import resolve_dtype
from sbmoe.retrieval.encode import default_device
from sbmoe.training.config import TrainingConfig
from sbmoe.training.data import load_training_data
from sbmoe.training.validation import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    model, tokenizer = load_model("minilm-l6")
    device = default_device()
    for seed in args.seeds:
        config = TrainingConfig(
            base="minilm-l6", dataset="scifact", output_dir="unused", system="adapter", freeze_encoder=True,
            exclude_positives_of="test", validation_holdout="documents", validation_share=0.1, seed=seed,
            dtype=args.dtype, progress=False,
        )  # fmt: skip
        data = load_training_data(config, init_distributed())
        for collection in data.collections:
            collection.pool_everything(
                model, tokenizer, batch_size=64, device=device, progress=False,
                dtype=resolve_dtype(args.dtype, device),
            )  # fmt: skip
        metrics = validate(model, tokenizer, data, config, device)
        print(json.dumps({"seed": seed, "validation_queries": len(data.collections[0].validation),
                          "training_queries": len(data.collections[0].train), "ndcg@10": round(metrics["ndcg@10"], 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
