"""The words that mark each expert's documents: for every expert of an `sbmoe analyze` routing.json, the
title words most over-represented among the documents routed to it (share of its documents with the word,
times the log of that share over the word's share in the whole corpus; words in at least 15 of its
documents). A reading aid for what an expert receives, not a statistic.

    python docs/results/cluster-experts/topic_words.py routing.json ../shared/datasets/scifact/corpus.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from collections import Counter, defaultdict

STOP = set(
    "the of and in a to for with by on from is are as at an or its their during after between into via not "
    "but than that this be can".split()
)


def words(title: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z\-]+", title.lower()) if w not in STOP and len(w) > 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("routing", help="routing.json written by sbmoe analyze")
    parser.add_argument("corpus", help="the collection's corpus.jsonl(.gz)")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    experts = json.loads(open(args.routing, encoding="utf-8").read())["experts"]["documents"]
    opener = gzip.open if args.corpus.endswith(".gz") else open
    with opener(args.corpus, "rt", encoding="utf-8") as handle:
        titles = {row["_id"]: row.get("title", "") for row in map(json.loads, handle)}
    everywhere, per_expert, sizes = Counter(), defaultdict(Counter), Counter()
    for doc_id, expert in experts.items():
        found = words(titles.get(doc_id, ""))
        everywhere.update(found)
        per_expert[expert].update(found)
        sizes[expert] += 1
    total = len(experts)
    print("| expert | documents | most over-represented title words |")
    print("|---:|---:|---|")
    for expert in sorted(per_expert):
        n = sizes[expert]
        score = {
            w: (c / n) * math.log((c / n) / (everywhere[w] / total))
            for w, c in per_expert[expert].items()
            if c >= 15
        }
        top = sorted(score, key=lambda w: -score[w])[: args.top]
        print(f"| {expert} | {n} | {', '.join(top)} |")


if __name__ == "__main__":
    main()
