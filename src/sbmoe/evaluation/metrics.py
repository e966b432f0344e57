"""Retrieval metrics with BEIR / trec_eval semantics, computed by ir-measures (on pytrec_eval).

The formulas live in the libraries; this module only decides what is evaluated and how:

- nDCG uses graded gains (gain = grade, discount log2(rank + 1), as trec_eval's ``ndcg_cut``);
  every other metric is binary, with any grade >= 1 relevant (grade 0 is judged non-relevant).
- The evaluated queries are all the queries in the qrels. A qrels query missing from the run, or with
  nothing relevant retrieved, scores 0 and still counts in the mean. Run queries without qrels are ignored.
- ``map@k`` is trec_eval's ``map_cut_k``: precision summed at the relevant documents retrieved in the top
  k, divided by the total number of relevant documents of the query (retrieved or not).
- Score ties are broken as trec_eval does: by document id, descending (a plain string comparison). The
  same order is used for every metric, including ``mrr@k`` (see ``_break_ties``).

ir-measures 0.4.3 pitfalls, checked by tests/test_metrics.py:

- pytrec_eval has no cutoff for reciprocal rank. The default ir-measures pipeline sends ``RR@10`` to its
  MS MARCO provider, which applies the cutoff; calling the pytrec_eval provider directly
  (``ir_measures.pytrec_eval.calc_aggregate([RR@10], ...)``) silently returns full-depth RR. Use the
  default pipeline only.
- That MS MARCO provider breaks score ties by document id *ascending*, the opposite of pytrec_eval. Tied
  scores are therefore replaced by their trec_eval rank order before evaluation, so that all metrics
  see one ranking.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ir_measures
from ir_measures import AP, RR, P, R, nDCG
from ir_measures.measures import Measure

from sbmoe.errors import SbmoeError

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
"""query id -> {doc id: score}; a higher score ranks higher."""
Qrels = dict[str, dict[str, int]]
"""query id -> {doc id: relevance grade}; grade >= 1 is relevant, 0 is judged non-relevant."""

METRICS: tuple[str, ...] = ("ndcg@10", "recall@100", "mrr@10", "map@100", "p@1", "ndcg@3")
"""The paper's six metrics, in the order of its tables."""
METRIC_LABELS = {"ndcg": "nDCG", "recall": "Recall", "map": "MAP", "mrr": "MRR", "p": "P"}
"""How tables and figures name each metric family."""

_FAMILIES: dict[str, Any] = {"ndcg": nDCG, "recall": R, "mrr": RR, "map": AP, "p": P}
_METRIC_NAME = re.compile(r"(ndcg|recall|mrr|map|p)@(\d+)")
_ACCEPTED = (
    "ndcg@k, recall@k, mrr@k, map@k or p@k, with k a positive integer (e.g. " + ", ".join(METRICS) + ")"
)


@dataclass
class MetricResult:
    """Scores of one run.

    aggregate: metric name -> mean over the evaluated queries (all the qrels' queries).
    per_query: metric name -> {query id -> value}, with every evaluated query present.
    num_queries: the number of evaluated queries (the denominator of every mean).
    """

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int

    def to_json(self) -> dict[str, Any]:
        """``{"ndcg@10": .., ..., "num_queries": n, "per_query": {metric: {query id: value}}}``."""
        return {**self.aggregate, "num_queries": self.num_queries, "per_query": self.per_query}


def metric_label(metric: str) -> str:
    """ "ndcg@10" -> "nDCG@10", "recall@100" -> "Recall@100", "unseen-docs/ndcg@10" -> "nDCG@10 unseen docs"
    (a view of `sbmoe.evaluation.views`); unknown names are returned unchanged."""
    from sbmoe.evaluation.views import VIEW_LABELS, split_view_metric

    view, metric = split_view_metric(metric)
    name, at, cutoff = metric.partition("@")
    label = METRIC_LABELS.get(name, name) + at + cutoff
    return f"{label} {VIEW_LABELS[view]}" if view else label


def _canonical_name(name: str) -> tuple[str, str, int]:
    """ "NDCG@010" -> ("ndcg@10", "ndcg", 10). Raises SbmoeError for a name outside the accepted forms."""
    match = _METRIC_NAME.fullmatch(name.strip().lower()) if isinstance(name, str) else None
    if match is None or int(match.group(2)) < 1:
        raise SbmoeError(f"unknown metric {name!r}: accepted forms are {_ACCEPTED}")
    family, cutoff = match.group(1), int(match.group(2))
    return f"{family}@{cutoff}", family, cutoff


def parse_metric(name: str) -> Measure:
    """A metric name -> its ir-measures measure: "ndcg@10" -> nDCG@10, "recall@100" -> R@100,
    "mrr@10" -> RR@10, "map@100" -> AP@100, "p@1" -> P@1; any cutoff k >= 1 works for the five families.
    Names are case-insensitive. Anything else raises SbmoeError listing the accepted forms.
    """
    _, family, cutoff = _canonical_name(name)
    return _FAMILIES[family] @ cutoff


def evaluate_run(run: Run, qrels: Qrels, metrics: Sequence[str] = METRICS) -> MetricResult:
    """Score `run` against `qrels` with BEIR / trec_eval semantics (see the module docstring).

    All measures are computed in one pass of ir-measures' default pipeline. Metric names in the result
    are canonical (lower case, e.g. "ndcg@10"), in the order given, without duplicates.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    measures: dict[str, Measure] = {}
    for name in metrics:
        canonical, _, _ = _canonical_name(name)
        measures.setdefault(canonical, parse_metric(canonical))
    if not measures:
        raise SbmoeError("no metrics to compute")
    if not qrels:
        raise SbmoeError("the qrels hold no queries: nothing to evaluate")

    query_ids = list(qrels)
    clean_qrels = {query_id: _integer_grades(query_id, judgments) for query_id, judgments in qrels.items()}
    without_relevant = [
        q for q, judgments in clean_qrels.items() if not any(g >= 1 for g in judgments.values())
    ]
    if without_relevant:
        logger.warning(
            "%d of %d qrels queries have no relevant document (grade >= 1): each scores 0 in the mean",
            len(without_relevant),
            len(query_ids),
        )
    # Only the qrels' queries are evaluated; scores are made plain floats (pytrec_eval rejects numpy's).
    evaluated_run = {query_id: _break_ties(run[query_id]) for query_id in query_ids if query_id in run}
    ignored = len(run) - len(evaluated_run)
    if ignored:
        logger.debug("%d run queries have no qrels and are ignored", ignored)

    name_of = {measure: name for name, measure in measures.items()}
    per_query = {name: dict.fromkeys(query_ids, 0.0) for name in measures}
    # The default pipeline (not a single provider: see the module docstring) yields every (measure, query)
    # of the qrels, with 0 for queries missing from the run.
    for metric in ir_measures.iter_calc(list(measures.values()), clean_qrels, evaluated_run):
        values = per_query[name_of[metric.measure]]
        if metric.query_id in values:
            values[metric.query_id] = float(metric.value)
    aggregate = {name: sum(values.values()) / len(query_ids) for name, values in per_query.items()}
    return MetricResult(aggregate=aggregate, per_query=per_query, num_queries=len(query_ids))


def remove_self_hits(run: Run) -> Run:
    """A new run without the hits whose doc id equals the query id (BEIR's convention for collections
    whose queries are corpus documents, such as ArguAna). The order of the remaining hits is kept."""
    return {
        query_id: {doc: score for doc, score in hits.items() if doc != query_id}
        for query_id, hits in run.items()
    }


def _break_ties(hits: Mapping[str, float]) -> dict[str, float]:
    """The hits with float scores; if any scores tie, scores are replaced by their rank order under
    trec_eval's rule (score descending, then doc id descending), so that every provider ranks alike.

    Only the order matters to the metrics computed here, never the score values.
    """
    scores = {doc: float(score) for doc, score in hits.items()}
    if len(set(scores.values())) == len(scores):
        return scores
    ordered = sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)
    return {doc: float(len(ordered) - rank) for rank, doc in enumerate(ordered)}


def _integer_grades(query_id: str, judgments: Mapping[str, Any]) -> dict[str, int]:
    """Grades as Python ints (pytrec_eval rejects floats and numpy ints); a fractional grade is an error."""
    grades = {}
    for doc, grade in judgments.items():
        try:
            as_int = int(grade)
        except (TypeError, ValueError, OverflowError):
            as_int = None
        if as_int is None or as_int != grade:
            raise SbmoeError(
                f"qrels: query {query_id!r}, document {doc!r}: grade {grade!r} is not an integer"
            )
        grades[doc] = as_int
    return grades
