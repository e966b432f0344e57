"""Metrics against hand-computed values (trec_eval semantics: gain = grade, discount log2(rank + 1))."""

from __future__ import annotations

import math
import random

import ir_measures
import numpy as np
import pytest
from ir_measures import AP, RR, P, R, nDCG

from sbmoe.errors import SbmoeError
from sbmoe.evaluation.metrics import METRICS, MetricResult, evaluate_run, parse_metric, remove_self_hits

ALL_ZERO = dict.fromkeys(METRICS, 0.0)


def ranked(*doc_ids: str) -> dict[str, float]:
    """Hits in the given order, best first, with distinct scores."""
    return {doc_id: float(len(doc_ids) - i) for i, doc_id in enumerate(doc_ids)}


def fillers(count: int, prefix: str = "n") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(count)]


def scores(run, qrels, metrics=METRICS) -> dict[str, float]:
    return evaluate_run(run, qrels, metrics).aggregate


def test_metrics_are_the_papers_six_in_order():
    assert METRICS == ("ndcg@10", "recall@100", "mrr@10", "map@100", "p@1", "ndcg@3")


def test_graded_ndcg_by_hand():
    qrels = {"q": {"r2": 2, "r1": 1}}
    run = {"q": ranked("junk", "r2", "r1")}  # ranks 1, 2, 3
    # DCG  = 2 / log2(2 + 1) + 1 / log2(3 + 1)            = 2 / 1.58496 + 1 / 2 = 1.26186 + 0.5 = 1.76186
    # IDCG = 2 / log2(1 + 1) + 1 / log2(2 + 1)            = 2 / 1       + 0.63093        = 2.63093
    # nDCG = 1.76186 / 2.63093                            = 0.66967
    expected = (2 / math.log2(3) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert expected == pytest.approx(0.66967, abs=1e-5)
    result = scores(run, qrels)
    assert result["ndcg@10"] == pytest.approx(expected, abs=1e-12)
    assert result["ndcg@3"] == pytest.approx(expected, abs=1e-12)  # all within the top 3
    # Binary metrics: first relevant at rank 2 -> RR = 1/2, P@1 = 0; AP = (1/2 + 2/3) / 2 = 7/12.
    assert result["mrr@10"] == pytest.approx(1 / 2)
    assert result["p@1"] == 0.0
    assert result["map@100"] == pytest.approx(7 / 12)
    assert result["recall@100"] == 1.0


def test_ndcg3_and_ndcg10_differ_by_the_cutoff():
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": ranked("a", "n1", "n2", "b")}  # relevant at ranks 1 and 4
    # IDCG (both cutoffs) = 1 + 1 / log2(3) = 1.63093
    # nDCG@3  = 1 / 1.63093                  = 0.61315 (b at rank 4 is cut)
    # nDCG@10 = (1 + 1 / log2(5)) / 1.63093  = 1.43068 / 1.63093 = 0.87722
    idcg = 1 + 1 / math.log2(3)
    result = scores(run, qrels)
    assert result["ndcg@3"] == pytest.approx(1 / idcg, abs=1e-12)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / idcg, abs=1e-12)
    assert result["ndcg@3"] == pytest.approx(0.61315, abs=1e-5)
    assert result["ndcg@10"] == pytest.approx(0.87722, abs=1e-5)


def test_relevant_at_rank_11():
    qrels = {"q": {"rel": 1}}
    run = {"q": ranked(*fillers(10), "rel")}
    result = scores(run, qrels)
    assert result["mrr@10"] == 0.0  # full-depth RR would be 1/11
    assert result["ndcg@10"] == 0.0
    assert result["ndcg@3"] == 0.0
    assert result["p@1"] == 0.0
    assert result["recall@100"] == 1.0
    assert result["map@100"] == pytest.approx(1 / 11)  # precision at rank 11 = 1/11, one relevant doc


def test_relevant_at_rank_2():
    qrels = {"q": {"rel": 1}}
    run = {"q": ranked("n", "rel")}
    result = scores(run, qrels)
    assert result["p@1"] == 0.0
    assert result["mrr@10"] == pytest.approx(1 / 2)
    assert result["ndcg@3"] == pytest.approx(1 / math.log2(3))  # DCG 1/log2(3), IDCG 1


def test_relevant_at_rank_101():
    qrels = {"q": {"rel": 1}}
    run = {"q": ranked(*fillers(100), "rel")}
    result = scores(run, qrels, (*METRICS, "recall@1000", "map@1000"))
    assert result["recall@100"] == 0.0
    assert result["map@100"] == 0.0
    assert result["recall@1000"] == 1.0
    assert result["map@1000"] == pytest.approx(1 / 101)


@pytest.mark.parametrize("metric", [*METRICS, "mrr@5", "p@5", "map@7", "recall@20", "ndcg@1"])
def test_every_cutoff_is_applied(metric):
    """One relevant doc at rank k counts; at rank k + 1 it does not."""
    cutoff = int(metric.split("@")[1])
    qrels = {"q": {"rel": 1}}
    inside = scores({"q": ranked(*fillers(cutoff - 1), "rel")}, qrels, [metric])[metric]
    outside = scores({"q": ranked(*fillers(cutoff), "rel")}, qrels, [metric])[metric]
    assert inside > 0.0
    assert outside == 0.0


def test_map_is_normalised_by_all_relevant_docs():
    qrels = {"q": {"r1": 1, "r2": 1}}
    run = {"q": ranked("n", "r1")}  # r2 never retrieved
    # AP = (precision at rank 2 = 1/2) / (2 relevant docs) = 0.25, not 0.5
    result = scores(run, qrels)
    assert result["map@100"] == pytest.approx(0.25)
    assert result["recall@100"] == pytest.approx(0.5)


def test_grade_zero_is_not_relevant():
    qrels = {"q": {"zero": 0, "rel": 1}}
    run = {"q": ranked("zero", "rel")}
    result = scores(run, qrels)
    assert result["p@1"] == 0.0
    assert result["mrr@10"] == pytest.approx(1 / 2)
    assert result["map@100"] == pytest.approx(1 / 2)  # one relevant doc, found at rank 2
    assert result["recall@100"] == 1.0  # 1 of 1 relevant, the grade-0 doc does not count
    # nDCG: gain 0 at rank 1, gain 1 at rank 2 -> (1/log2(3)) / 1
    assert result["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_query_with_only_grade_zero_judgments_scores_zero_and_counts(caplog):
    qrels = {"good": {"d": 1}, "none": {"d": 0}}
    run = {"good": ranked("d"), "none": ranked("d")}
    result = evaluate_run(run, qrels)
    assert result.num_queries == 2
    assert {m: result.per_query[m]["none"] for m in METRICS} == ALL_ZERO
    assert result.aggregate == pytest.approx(dict.fromkeys(METRICS, 0.5))
    assert "no relevant document" in caplog.text


def test_empty_missing_and_run_only_queries():
    qrels = {"perfect": {"a": 1}, "empty": {"b": 1}, "missing": {"c": 1}}
    run = {
        "perfect": ranked("a"),  # every metric 1
        "empty": ranked("x", "y"),  # nothing relevant retrieved: every metric 0
        "run_only": ranked("a", "b", "c"),  # no qrels: ignored
        # "missing" is not in the run: every metric 0
    }
    result = evaluate_run(run, qrels)
    assert result.num_queries == 3
    for metric in METRICS:
        assert result.per_query[metric] == {"perfect": 1.0, "empty": 0.0, "missing": 0.0}
        # mean = (1 + 0 + 0) / 3
        assert result.aggregate[metric] == pytest.approx(1 / 3)


def test_query_with_no_hits_at_all():
    result = evaluate_run({"q": {}}, {"q": {"d": 1}, "p": {"d": 1}})
    assert result.aggregate == ALL_ZERO
    assert evaluate_run({}, {"q": {"d": 1}}).aggregate == ALL_ZERO


def test_ties_are_broken_by_doc_id_descending_for_every_metric():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0}}  # trec_eval order: "b" then "a"
    result = scores(run, qrels)
    assert result["p@1"] == 0.0
    # RR is computed by another ir-measures provider (MS MARCO), whose own tie rule is the opposite.
    assert result["mrr@10"] == pytest.approx(1 / 2)
    assert result["map@100"] == pytest.approx(1 / 2)
    assert result["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_tie_breaking_keeps_untied_order():
    qrels = {"q": {"c": 1}}
    run = {"q": {"a": 3.0, "b": 2.0, "z": 2.0, "c": 2.0, "d": 0.5}}
    # order: a (3.0), then the ties z, c, b (doc id descending), then d -> c at rank 3
    result = scores(run, qrels)
    assert result["mrr@10"] == pytest.approx(1 / 3)
    assert result["ndcg@3"] == pytest.approx(1 / math.log2(4))


def test_numpy_scores_and_grades_are_accepted():
    run = {"q": {"a": np.float32(0.5), "b": np.float32(0.7)}}
    qrels = {"q": {"a": np.int64(1), "b": 0}}
    assert scores(run, qrels)["mrr@10"] == pytest.approx(1 / 2)


def test_fractional_grade_is_an_error():
    with pytest.raises(SbmoeError, match="not an integer"):
        evaluate_run({"q": {"a": 1.0}}, {"q": {"a": 1.5}})


def test_agrees_with_ir_measures_on_a_random_run():
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(300)]
    qrels = {f"q{q}": {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, 5)} for q in range(40)}
    run = {f"q{q}": {d: rng.random() for d in rng.sample(docs, 150)} for q in range(45)}
    result = evaluate_run(run, qrels)
    expected = ir_measures.calc_aggregate([parse_metric(m) for m in METRICS], qrels, run)
    for metric in METRICS:
        assert result.aggregate[metric] == pytest.approx(expected[parse_metric(metric)], abs=1e-12)


def test_result_names_and_json():
    result = evaluate_run({"q": ranked("a")}, {"q": {"a": 1}}, ["NDCG@10", "p@1", "ndcg@10"])
    assert list(result.aggregate) == ["ndcg@10", "p@1"]
    assert isinstance(result, MetricResult)
    assert result.to_json() == {
        "ndcg@10": 1.0,
        "p@1": 1.0,
        "num_queries": 1,
        "per_query": {"ndcg@10": {"q": 1.0}, "p@1": {"q": 1.0}},
    }


def test_empty_qrels_is_an_error():
    with pytest.raises(SbmoeError, match="qrels"):
        evaluate_run({"q": ranked("a")}, {})


@pytest.mark.parametrize(
    ("name", "measure"),
    [
        ("ndcg@10", nDCG @ 10),
        ("recall@100", R @ 100),
        ("mrr@10", RR @ 10),
        ("map@100", AP @ 100),
        ("p@1", P @ 1),
        ("ndcg@3", nDCG @ 3),
        ("NDCG@5", nDCG @ 5),
        (" recall@1000 ", R @ 1000),
    ],
)
def test_parse_metric(name, measure):
    assert parse_metric(name) == measure


@pytest.mark.parametrize(
    "name", ["ndcg", "ndcg@", "ndcg@0", "ndcg@x", "ndcg@-1", "bleu@10", "nDCG_cut_10", "", "P_10"]
)
def test_parse_metric_errors(name):
    with pytest.raises(SbmoeError, match="accepted forms are ndcg@k, recall@k, mrr@k, map@k or p@k"):
        parse_metric(name)


def test_unknown_metric_in_evaluate_run():
    with pytest.raises(SbmoeError, match="unknown metric 'bleu@4'"):
        evaluate_run({"q": ranked("a")}, {"q": {"a": 1}}, ["ndcg@10", "bleu@4"])


def test_remove_self_hits():
    run = {"q1": {"d1": 3.0, "q1": 2.0, "Q1": 1.5, "q10": 1.0}, "q2": {"q1": 1.0, "q2": 0.5}}
    cleaned = remove_self_hits(run)
    assert cleaned == {"q1": {"d1": 3.0, "Q1": 1.5, "q10": 1.0}, "q2": {"q1": 1.0}}
    assert list(cleaned["q1"]) == ["d1", "Q1", "q10"]  # order kept
    assert "q1" in run["q1"]  # the input is untouched
