"""Scores that tell learning from memorising: the same run seen against what a training split judged.

Given a seen split (the qrels a model was trained on, e.g. "train"), an evaluation adds three views beside the
usual metrics, each metric named "<view>/<metric>" (e.g. "unseen-docs/ndcg@10") in metrics.json, its
per-query values included, so that reports test them like any metric:

- unseen-docs: every document judged relevant in the seen split removed from the ranking and from the
  judgements; queries left without a relevant document are dropped (and counted). Only what training could
  not have memorised is scored.
- seen-queries: the queries with a relevant document that is also relevant in the seen split.
- other-queries: the rest.

A model that only memorised its training positives gains on seen-queries and nothing on unseen-docs.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from sbmoe.data.splits import relevant

VIEWS = ("unseen-docs", "seen-queries", "other-queries")
VIEW_LABELS = {
    "unseen-docs": "unseen docs",
    "seen-queries": "queries with a seen positive",
    "other-queries": "other queries",
}


def view_metric(view: str, metric: str) -> str:
    """ "unseen-docs", "ndcg@10" -> "unseen-docs/ndcg@10"."""
    return f"{view}/{metric}"


def split_view_metric(name: str) -> tuple[str | None, str]:
    """ "unseen-docs/ndcg@10" -> ("unseen-docs", "ndcg@10"); "ndcg@10" -> (None, "ndcg@10")."""
    view, slash, metric = name.partition("/")
    return (view, metric) if slash and view in VIEWS else (None, name)


def partition(qrels: Mapping[str, Mapping[str, int]], seen: set[str]) -> tuple[list[str], list[str]]:
    """(queries with a relevant document in `seen`, the other queries), in qrels order."""
    with_seen = [query for query, judgements in qrels.items() if relevant(judgements) & seen]
    chosen = set(with_seen)
    return with_seen, [query for query in qrels if query not in chosen]


def unseen_qrels(qrels: Mapping[str, Mapping[str, int]], seen: set[str]) -> dict[str, dict[str, int]]:
    """The judgements without the `seen` documents, and without the queries left with no relevant one."""
    kept = {}
    for query, judgements in qrels.items():
        rest = {doc: grade for doc, grade in judgements.items() if doc not in seen}
        if relevant(rest):
            kept[query] = rest
    return kept


def view_summary(
    per_query: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    seen: set[str],
    unseen: Any | None,
    metrics: Sequence[str],
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The views of one evaluation: (a summary, the per-query values of every view metric).

    per_query: the evaluation's {metric: {query: value}}; unseen: the `MetricResult` of the run without the
    seen documents against `unseen_qrels` (None when no query keeps a relevant document).
    The summary holds, per view, num_queries and each metric's mean (none for an empty view)."""
    with_seen, others = partition(qrels, seen)
    summary: dict[str, Any] = {}
    values: dict[str, dict[str, float]] = {}
    for view, queries in (("seen-queries", with_seen), ("other-queries", others)):
        summary[view] = {"num_queries": len(queries)}
        for metric in metrics if queries else ():
            subset = {query: per_query[metric][query] for query in queries}
            values[view_metric(view, metric)] = subset
            summary[view][metric] = statistics.fmean(subset.values())
    kept = unseen.num_queries if unseen is not None else 0
    summary["unseen-docs"] = {"num_queries": kept, "dropped_queries": len(qrels) - kept}
    if unseen is not None:
        for metric in metrics:
            values[view_metric("unseen-docs", metric)] = unseen.per_query[metric]
            summary["unseen-docs"][metric] = unseen.aggregate[metric]
    return summary, values
