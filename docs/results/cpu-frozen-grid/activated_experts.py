"""Activated experts (the paper's Table III) from the grid's own result files.

For every SB-MoE run evaluated with TOP-1 routing on its in-domain test split, `expert_counts` in its
metrics.json holds how many queries and documents had each expert as their top choice. An expert is
activated when it receives at least 1 % of those texts (`sbmoe.analysis.routing.active_experts`). The
figures come from `sbmoe.experiments.experts_table`, which also gives them (with balance, null share and
zero-shot means) in the "Activated experts" section of `sbmoe report`.

    python docs/results/cpu-frozen-grid/activated_experts.py runs/cpu-frozen-grid
"""

import sys
from pathlib import Path

from sbmoe.experiments.experts_table import build_expert_usage
from sbmoe.experiments.results import MetricsFiles, deduplicate_results, load_results

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cpu-frozen-grid")
rows = build_expert_usage(deduplicate_results(load_results(folder)), MetricsFiles(folder))
print("| trained on | system | N | activated experts per seed | mean |")
print("|---|---|---:|---|---:|")
for row in rows:
    if row.row.mode == "top1":
        train, system, n = row.train_dataset, row.row.system, row.row.num_experts
        values = ", ".join(map(str, row.activated))
        print(f"| {train} | {system} | {n} | {values} | {row.activated_mean:.1f} |")
