"""What one split of judgements shares with another: the documents a split judged relevant, the queries that
share a relevant document with another split, and validation hold-outs that share none.

A test query whose relevant document was also a training query's positive can be answered by memorising that
document, not by retrieval that training improved (SciFact: 196 of its 300 test queries). These functions
let training leave such queries out (`exclude_sharing`), validate on queries whose documents training never
saw (`hold_out`, kind "documents") and evaluate on documents no training query judged
(`sbmoe.evaluation.views`).

Qrels are {query id: {document id: grade}}; a grade >= 1 is relevant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

logger = logging.getLogger(__name__)

HOLDOUTS = ("documents", "queries")
"""documents: validation queries share no relevant document with the remaining training queries (whole
groups of queries linked by shared positives are held out); queries: a random sample of queries."""


def relevant(judgements: Mapping[str, int]) -> set[str]:
    """The documents judged relevant (grade >= 1) in one query's judgements."""
    return {doc for doc, grade in judgements.items() if grade >= 1}


def relevant_documents(qrels: Mapping[str, Mapping[str, int]]) -> set[str]:
    """Every document some query of `qrels` judges relevant."""
    return {doc for judgements in qrels.values() for doc in relevant(judgements)}


def sharing_queries(qrels: Mapping[str, Mapping[str, int]], documents: set[str]) -> list[str]:
    """The queries of `qrels` with a relevant document among `documents`, in qrels order."""
    return [query for query, judgements in qrels.items() if relevant(judgements) & documents]


def exclude_sharing(
    qrels: Mapping[str, Mapping[str, int]], other: Mapping[str, Mapping[str, int]]
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """`qrels` without the queries that share a relevant document with a query of `other`; and those queries.

    The training option `exclude_positives_of`: trained on what is left, a model cannot score on `other` by
    recalling a document it was trained to find."""
    dropped = sharing_queries(qrels, relevant_documents(other))
    dropped_set = set(dropped)
    kept = {query: dict(judgements) for query, judgements in qrels.items() if query not in dropped_set}
    return kept, dropped


def linked_groups(positives: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The queries grouped so that two queries sharing a positive are in one group (the connected components
    of the query-document graph), each group in the order of `positives`, groups by their first query."""
    parent = {query: query for query in positives}

    def root(query: str) -> str:
        while parent[query] != query:
            parent[query] = parent[parent[query]]
            query = parent[query]
        return query

    first_query: dict[str, str] = {}
    for query, docs in positives.items():
        for doc in docs:
            if doc in first_query:
                parent[root(query)] = root(first_query[doc])
            else:
                first_query[doc] = query
    groups: dict[str, list[str]] = {}
    for query in positives:
        groups.setdefault(root(query), []).append(query)
    return list(groups.values())


def hold_out(
    positives: Mapping[str, Iterable[str]], share: float, seed: int, kind: str = "documents"
) -> tuple[list[str], list[str]] | None:
    """Split the queries (query id -> its positives) into (training, validation) ids, reproducibly for a seed,
    with about `share` of them (at least one) in validation.

    kind "queries": a random sample. kind "documents": whole groups of queries linked by shared positives
    (`linked_groups`), drawn at random until the share is reached, skipping a group that would overshoot it
    by more than half; then no validation query shares a positive with a training query. Returns None when
    no such split reaches half the share (one group holds nearly every query, as in NFCorpus)."""
    import torch  # here, so that reading data never loads torch

    if kind not in HOLDOUTS:
        raise ValueError(f"hold-out kind must be one of {HOLDOUTS}, got {kind!r}")
    queries = list(positives)
    target = max(1, round(share * len(queries)))
    generator = torch.Generator().manual_seed(seed)
    if kind == "queries":
        held = {queries[i] for i in torch.randperm(len(queries), generator=generator)[:target].tolist()}
    else:
        groups = linked_groups(positives)
        held = set()
        for group in (groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()):
            if len(held) >= target:
                break
            if len(held) + len(group) <= target * 1.5:
                held.update(group)
        if len(held) < target / 2 or len(held) == len(queries):
            return None
    return [q for q in queries if q not in held], [q for q in queries if q in held]
