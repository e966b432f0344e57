"""Metrics (ir-measures with BEIR / trec_eval semantics) and the one-dataset evaluation driver."""

from sbmoe.evaluation.metrics import METRICS, MetricResult, evaluate_run, parse_metric, remove_self_hits

__all__ = ["METRICS", "MetricResult", "evaluate_run", "parse_metric", "remove_self_hits"]
