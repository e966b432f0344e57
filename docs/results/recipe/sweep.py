"""Recipe measurements: train with given settings for several seeds, record the validation curve and the
test scores, one JSON line per run (appended to --results).

    python docs/results/recipe/sweep.py --name adapter-last-e30 --seeds 1 2 3 \
        --set base=minilm-l6 dataset=scifact system=adapter freeze_encoder=true selection=last epochs=30

Settings are TrainingConfig fields (values parsed as YAML). Choices are made on the validation curve;
the test scores are recorded to check the chosen recipe afterwards, never to choose it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate
from sbmoe.training.config import resolve_config
from sbmoe.training.trainer import train


def _parse(value: str):
    """A number (YAML reads 1e-4 as a string), else YAML (true, null, words)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", default=str(Path(__file__).with_name("results.jsonl")))
    parser.add_argument("--test-split", default="test", help="scored after training; 'none' skips it")
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = _parse(value)
    for seed in args.seeds:
        folder = Path(tempfile.mkdtemp(prefix="sbmoe-recipe-")) / "model"
        started = time.perf_counter()
        config = resolve_config({}, {**settings, "seed": seed, "output_dir": str(folder), "progress": False})
        summary = train(config)
        train_seconds = time.perf_counter() - started
        log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        curve = [round(line["ndcg@10"], 4) for line in log if line.get("type") == "validation"]
        result = {"ndcg@10": float("nan"), "recall@100": float("nan")}
        if args.test_split != "none":
            [result] = evaluate(
                EvaluateSettings(
                    model=str(folder), dataset=config.dataset, split=args.test_split,
                    data_dir=config.data_dir, output_dir=str(folder.parent / "eval"), top_k=100,
                    progress=False, dtype=config.dtype,
                )
            )  # fmt: skip
        line = {
            "name": args.name,
            "seed": seed,
            "settings": settings,
            "test_ndcg@10": round(result["ndcg@10"], 4),
            "test_recall@100": round(result["recall@100"], 4),
            "validation_ndcg@10": curve,
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "train_seconds": round(train_seconds, 1),
        }
        with open(args.results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        print(json.dumps({k: v for k, v in line.items() if k != "validation_ndcg@10"}), flush=True)
        shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
