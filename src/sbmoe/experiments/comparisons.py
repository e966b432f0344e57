"""What every comparison in a report shares: the records of each table, and the paired significance test.

A table is one (training collection, base, evaluation collection); its rows are system rows, each with one
record (results.jsonl line) per seed (`group_results`). A comparison pairs two rows' records on one metric
(`Pairing`); `paired_tests` runs the paired test on their per-query values and corrects for multiple
comparisons with Bonferroni. The tables against a baseline (`sbmoe.experiments.tables`) and the head-to-head
comparison (`sbmoe.experiments.compare`) both test this way; the statistics are in
`sbmoe.evaluation.significance`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sbmoe.evaluation.significance import TESTS, bonferroni
from sbmoe.experiments.results import MetricsFiles, SystemRow, per_query_mean, row_of

logger = logging.getLogger(__name__)

GroupKey = tuple[str | None, str, str]
"""(training collection or None, base, evaluation collection): one table."""


def group_results(results: list[dict]) -> dict[GroupKey, dict[SystemRow, list[dict]]]:
    """(train_dataset, base, eval_dataset) -> system row -> its records (one per seed).

    Zero-shot records (train_dataset null) join every group of their base and collection."""
    groups: dict[GroupKey, dict[SystemRow, list[dict]]] = {}
    for record in results:
        if record["train_dataset"] is not None:
            key = (record["train_dataset"], record["base"], record["eval_dataset"])
            groups.setdefault(key, {}).setdefault(row_of(record), []).append(record)
    for record in results:
        if record["train_dataset"] is not None:
            continue
        keys = [k for k in groups if k[1] == record["base"] and k[2] == record["eval_dataset"]]
        for key in keys or [(None, record["base"], record["eval_dataset"])]:
            groups.setdefault(key, {}).setdefault(row_of(record), []).append(record)
    return groups


def group_order(key: GroupKey, setting: str) -> tuple:
    """Sort key of a table: trained before untrained, then training collection, base, in-domain first."""
    train, base, eval_dataset = key
    return (train is None, train or "", base, setting != "in-domain", eval_dataset)


def metric_values(records: Sequence[dict], metric: str) -> list[float]:
    """The collection-level `metric` of each record (seed) that has it."""
    return [float(r["metrics"][metric]) for r in records if metric in r["metrics"]]


@dataclass(frozen=True)
class Pairing:
    """One paired comparison: `metric` of system A's records against system B's (one record per seed)."""

    metric: str
    records_a: Sequence[dict]
    records_b: Sequence[dict]
    name: str  # for messages: "SB-MoE learned N=6 TOP-1 vs FINE-TUNED on scifact"


@dataclass(frozen=True)
class PairedTest:
    p_value: float | None  # None: fewer than two shared queries, no test
    p_adjusted: float | None  # Bonferroni over the pairings of the same metric that have a p-value
    significant: bool  # p_adjusted < alpha


def paired_tests(
    pairings: Sequence[Pairing], files: MetricsFiles, test: str, alpha: float
) -> list[PairedTest]:
    """The paired `test` ("t-test" or "randomization") of each pairing, A against B, on the per-query values
    of its metric (each side averaged over its seeds, on the queries both share); then Bonferroni over the
    pairings of each metric that were tested (m = their number). A pairing with fewer than two shared
    queries is not tested (p None, and a warning)."""
    run_test = TESTS[test]
    p_values: list[float | None] = []
    for pairing in pairings:
        values_a = per_query_mean(pairing.records_a, pairing.metric, files)
        values_b = per_query_mean(pairing.records_b, pairing.metric, files)
        shared = sorted(set(values_a) & set(values_b))
        if len(shared) < 2:
            logger.warning("%s: %d shared queries, no test", pairing.name, len(shared))
            p_values.append(None)
            continue
        p_values.append(run_test([values_a[q] for q in shared], [values_b[q] for q in shared]))
    adjusted: list[float | None] = [None] * len(pairings)
    for metric in dict.fromkeys(pairing.metric for pairing in pairings):
        tested = [
            i for i, pairing in enumerate(pairings) if pairing.metric == metric and p_values[i] is not None
        ]
        for i, p_adjusted in zip(tested, bonferroni([p_values[i] for i in tested]), strict=True):
            adjusted[i] = p_adjusted
    return [
        PairedTest(p_value, p_adjusted, p_adjusted is not None and p_adjusted < alpha)
        for p_value, p_adjusted in zip(p_values, adjusted, strict=True)
    ]


__all__ = [
    "GroupKey", "PairedTest", "Pairing", "group_order", "group_results", "metric_values", "paired_tests",
]  # fmt: skip
