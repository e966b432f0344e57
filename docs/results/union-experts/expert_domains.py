"""Do the experts of a model trained on several collections divide them? Reads the routing.json that
`sbmoe analyze` wrote for each collection (same model) and prints, per expert, how many of each collection's
test documents it receives, and the share of each collection's documents that sit on experts where that
collection is the majority (the larger share of its own collection's documents: sizes differ).

    cd docs/results/union-experts
    python expert_domains.py routing-cluster-scifact.json routing-cluster-nfcorpus-preproc.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("routing", type=Path, nargs="+", help="routing.json of each collection, same model")
    args = parser.parse_args()
    analyses = [json.loads(path.read_text(encoding="utf-8")) for path in args.routing]
    names = [analysis["dataset"] for analysis in analyses]
    counts = [analysis["documents"]["counts"] for analysis in analyses]
    experts = range(len(counts[0]))
    shares = [[count / sum(c) for count in c] for c in counts]
    majority = [
        max(range(len(names)), key=lambda i: shares[i][e]) if any(c[e] for c in counts) else None
        for e in experts
    ]

    print("| expert | " + " | ".join(f"{name} documents" for name in names) + " | majority |")
    print("|---:|" + "---:|" * len(names) + "---|")
    for e in experts:
        row = " | ".join(str(c[e]) for c in counts)
        print(f"| {e} | {row} | {'–' if majority[e] is None else names[majority[e]]} |")
    for i, (name, analysis) in enumerate(zip(names, analyses, strict=True)):
        own = sum(counts[i][e] for e in experts if majority[e] == i) / sum(counts[i])
        agreement = analysis["shared_expert"]
        print(
            f"\n{name}: {own:.1%} of its documents on experts where it is the majority; "
            f"a query and a relevant document share an expert in {agreement['same_expert']:.1%} "
            f"of {agreement['pairs']} pairs "
            f"(chance {agreement['chance']:.1%})"
        )


if __name__ == "__main__":
    main()
