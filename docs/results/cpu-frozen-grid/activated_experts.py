"""Activated experts (the paper's Table III) and the shared-expert rate, from the grid's own result files.

For every SB-MoE run evaluated with TOP-1 routing on its in-domain test split, `expert_counts` in its
metrics.json holds how many queries and documents had each expert as their top choice. An expert is
activated when it receives at least 1 % of those texts (`sbmoe.analysis.routing.active_experts`).

    python docs/results/cpu-frozen-grid/activated_experts.py runs/cpu-frozen-grid
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from sbmoe.analysis.routing import active_experts

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cpu-frozen-grid")
found = defaultdict(list)  # (trained on, system, N) -> activated experts per seed
for line in (folder / "results.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record["mode"] != "top1" or record["eval_dataset"] != record["train_dataset"]:
        continue
    if not record["system"].startswith("sbmoe-"):
        continue
    counts = json.loads((folder / record["metrics_file"]).read_text())["expert_counts"]
    total = [q + d for q, d in zip(counts["queries"], counts["documents"], strict=True)]
    found[(record["train_dataset"], record["system"], record["num_experts"])].append(active_experts(total))

print("| trained on | system | N | activated experts per seed | mean |")
print("|---|---|---:|---|---:|")
for (train, system, n), values in sorted(found.items()):
    print(f"| {train} | {system} | {n} | {', '.join(map(str, values))} | {statistics.fmean(values):.1f} |")
