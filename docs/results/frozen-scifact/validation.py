"""Each trained system's validation nDCG@10 at its last epoch (the model kept), mean and spread over seeds:
the figure a design is chosen by (never the test split). Reads an experiment folder's training summaries.

    python docs/results/frozen-scifact/validation.py runs/frozen-scifact [--json OUT] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "experiment", type=Path, help="experiment folder (runs/<collection>/<base>/<label>/seed<S>)"
    )
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    parser.add_argument("--seeds", help="only these seeds, comma-separated (default: every seed found)")
    args = parser.parse_args()
    wanted = None if args.seeds is None else {int(seed) for seed in args.seeds.split(",")}
    last: dict[str, dict[int, float]] = defaultdict(dict)
    for summary_file in sorted(args.experiment.glob("runs/*/*/*/seed*/model/training_summary.json")):
        label = summary_file.parents[2].name
        seed = int(summary_file.parents[1].name.removeprefix("seed"))
        if wanted is not None and seed not in wanted:
            continue
        history = json.loads(summary_file.read_text(encoding="utf-8"))["history"]
        last[label][seed] = history[-1]["ndcg@10"]
    rows = []
    for label, by_seed in last.items():
        values = [by_seed[seed] for seed in sorted(by_seed)]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(
            {"system": label, "seeds": sorted(by_seed), "mean": statistics.fmean(values), "std": spread}
        )
    rows.sort(key=lambda row: -row["mean"])
    print("| system | seeds | validation nDCG@10 (last epoch) |")
    print("|---|---|---:|")
    for row in rows:
        seeds = ",".join(map(str, row["seeds"]))
        print(f"| {row['system']} | {seeds} | {row['mean']:.4f} ± {row['std']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
