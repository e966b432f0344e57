"""Tables of results.jsonl (written by sweep.py): per setting, test nDCG@10 mean +- std over seeds and the
validation nDCG@10 (mean over seeds) at chosen epochs.

    python docs/results/recipe/summarize.py [--results docs/results/recipe/results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

EPOCHS = (1, 10, 20, 30, 40, 50, 60, 80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(Path(__file__).with_name("results.jsonl")))
    args = parser.parse_args()
    runs = defaultdict(list)
    for line in Path(args.results).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        runs[record["name"]].append(record)
    print("| setting | seeds | test nDCG@10 mean ± std | validation nDCG@10 (mean of seeds) by epoch |")
    print("|---|---|---|---|")
    for name, records in runs.items():
        tests = [r["test_ndcg@10"] for r in records if r["test_ndcg@10"] == r["test_ndcg@10"]]  # not NaN
        test = "n/a"
        if tests:
            spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
            test = f"{statistics.mean(tests):.4f} ± {spread:.4f}"
        length = min(len(r["validation_ndcg@10"]) for r in records)
        curve = ", ".join(
            f"{epoch}: {statistics.mean(r['validation_ndcg@10'][epoch - 1] for r in records):.4f}"
            for epoch in sorted({*(e for e in EPOCHS if e <= length), length})
        )
        print(f"| {name} | {len(records)} | {test} | {curve} |")


if __name__ == "__main__":
    main()
