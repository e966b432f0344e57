"""Evaluate one retriever on one collection split: encode, search, score, write artifacts.

Writes to the output folder: metrics.json (aggregate and per-query), run.trec, settings.json (the
resolved settings, the model's config and provenance).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from sbmoe.data import load_dataset
from sbmoe.data.splits import exclude_sharing, relevant_documents
from sbmoe.errors import SbmoeError
from sbmoe.evaluation.memorisation import Fitted, fit_memorisation
from sbmoe.evaluation.metrics import METRICS, MetricResult, evaluate_run, remove_self_hits
from sbmoe.evaluation.pipeline import PooledCollection, Retrieval, pool_collection, pool_queries, retrieve
from sbmoe.evaluation.settings import EvaluateSettings
from sbmoe.evaluation.views import VIEWS, unseen_qrels, view_metric, view_summary
from sbmoe.io import provenance, write_json
from sbmoe.modeling.card import record_evaluations
from sbmoe.modeling.loading import load_model, trained_on
from sbmoe.modeling.model import SBMoEModel
from sbmoe.modeling.precision import dtype_name, resolve_dtype
from sbmoe.modeling.routing_stats import expert_counts
from sbmoe.retrieval.ann import ann_search, ann_settings, build_ann_index, recall_against_exact
from sbmoe.retrieval.encode import EmbeddingCache, apply_head, default_device
from sbmoe.retrieval.search import search, to_run
from sbmoe.retrieval.trec import write_trec_run

logger = logging.getLogger(__name__)


def evaluate(
    settings: EvaluateSettings, loaded: tuple[SBMoEModel, Any] | None = None
) -> list[dict[str, Any]]:
    """Run the evaluation and write its artifacts. Returns one summary (as in metrics.json) per mode.

    The encoder runs once over the corpus and the queries; every routing mode is then the model's head
    applied to the same pooled vectors, so evaluating several modes costs little more than one.
    loaded: an already loaded (model, tokenizer) for `settings.model`, to skip loading it again.
    """
    started = time.perf_counter()
    dataset = load_dataset(settings.dataset, settings.data_dir)
    qrels = dataset.qrels(settings.split)
    corpus, queries = dataset.corpus, dataset.queries  # read (and validated) before the model loads
    output_dir = settings.resolved_output_dir(dataset.name)
    drop_self_hits = _decide_self_hits(settings.drop_self_hits, dataset)

    model, tokenizer = loaded or load_model(
        settings.model, trust_remote_code=settings.trust_remote_code, **settings.encoder_settings()
    )
    modes = _check_modes(settings.modes, model)
    device = default_device()
    model.to(device)
    dtype = resolve_dtype(settings.dtype, device)

    cache = EmbeddingCache(settings.cache_dir) if settings.use_cache else None
    encoding = settings.encoding(device)
    pooled = pool_collection(model, tokenizer, corpus, queries, qrels, cache=cache, **encoding)
    seen_split = _seen_split(settings, dataset)
    seen = relevant_documents(dataset.qrels(seen_split)) if seen_split else None
    fitting = None  # NUDGE's or the prior's split: (its name, qrels, query ids, pooled queries)
    if settings.nudge or settings.prior:
        split = settings.nudge or settings.prior
        fitting_qrels = dataset.qrels(split)
        if settings.exclude_positives_of is not None:  # the queries training would keep
            fitting_qrels, dropped = exclude_sharing(
                fitting_qrels, dataset.qrels(settings.exclude_positives_of)
            )
            logger.info(
                "%s: %d %s queries share a relevant document with %s and are left out of the fit",
                dataset.name, len(dropped), split, settings.exclude_positives_of,
            )  # fmt: skip
        ids, fitting_queries, _ = pool_queries(
            model, tokenizer, queries, fitting_qrels, cache=cache, **encoding
        )
        fitting = (split, fitting_qrels, ids, fitting_queries)

    summaries = []
    for mode in modes:
        tick = time.perf_counter()
        # One extra hit per query so that dropping a self-hit still leaves top_k.
        k = settings.top_k + 1 if drop_self_hits else settings.top_k
        fitted: list[Fitted] = []  # filled by `adjust` once the documents' embeddings exist
        adjust = None
        if fitting is not None:
            adjust = _memorisation(settings, model, fitting, pooled.document_ids, mode, fitted)
        found = retrieve(
            model, pooled.queries, pooled.documents, k, mode, backend=settings.backend, adjust=adjust
        )
        scores, indices, index_report = found.scores, found.indices, None
        if settings.index_type != "exact":
            scores, indices, index_report = _approximate_search(
                settings, found.document_embeddings, found.query_embeddings, k, exact_rows=indices
            )
        run = to_run(pooled.query_ids, pooled.document_ids, scores, indices)
        if drop_self_hits:
            run = _top(remove_self_hits(run), settings.top_k)
        result = evaluate_run(run, qrels, METRICS)
        views, view_values = {}, {}
        if seen is not None:
            views, view_values = _views(settings, found, pooled, qrels, seen, result, drop_self_hits)
            views = {"seen_split": seen_split, "seen_documents": len(seen), **views}
        per_mode = settings.per_mode_folders if settings.per_mode_folders is not None else len(modes) > 1
        mode_dir = output_dir / mode_folder(mode) if per_mode else output_dir
        summary = {
            "dataset": dataset.name,
            "split": settings.split,
            "model": settings.model,
            "mode": mode,
            "dtype": dtype_name(dtype),
            **result.aggregate,
            "num_queries": result.num_queries,
            **{name: statistics.fmean(values.values()) for name, values in view_values.items()},
            "views": views or None,
            "memorisation": (
                {**fitted[0].report(), "exclude_positives_of": settings.exclude_positives_of}
                if fitted
                else None
            ),
            "drop_self_hits": drop_self_hits,
            "corpus_from_cache": pooled.documents_from_cache,
            "seconds": {
                **{name: round(seconds, 3) for name, seconds in pooled.seconds.items()},
                "head_search_and_metrics": round(time.perf_counter() - tick, 3),
                "total": round(time.perf_counter() - started, 3),
            },
            "index": index_report,
            "expert_counts": _expert_counts(model, found.query_experts, found.document_experts),
            "per_query": {**result.per_query, **view_values},
        }
        write_trec_run(run, mode_dir / "run.trec", tag=_run_tag(settings.model))
        write_json(mode_dir / "metrics.json", summary)
        write_json(
            mode_dir / "settings.json",
            {
                "settings": asdict(settings),
                "model_config": model.config.to_dict(),
                "dataset_path": str(dataset.path),
                "provenance": provenance(),
            },
        )
        summaries.append({**summary, "output_dir": str(mode_dir)})
    if settings.record_in_card and Path(settings.model).is_dir():
        record_evaluations(settings.model, summaries)
    return summaries


def _memorisation(
    settings: EvaluateSettings,
    model: SBMoEModel,
    fitting: tuple[str, dict[str, dict[str, int]], list[str], Any],
    document_ids: list[str],
    mode: str | None,
    fitted: list[Fitted],
):
    """The `adjust` of `retrieve` for NUDGE or the prior: fitted on the documents' embeddings in `mode` (and
    the fitting queries' in the same mode), appended to `fitted`, then applied."""
    split, qrels, query_ids, pooled_queries = fitting

    def adjust(query_embeddings: np.ndarray, document_embeddings: np.ndarray):
        fit = fit_memorisation(
            "nudge" if settings.nudge else "prior", split, qrels, query_ids,
            apply_head(model, pooled_queries, mode, kind="query")[0], document_ids, document_embeddings,
            variant=settings.nudge_variant, seed=settings.memorisation_seed,
        )  # fmt: skip
        fitted.append(fit)
        return fit.transform(query_embeddings, document_embeddings)

    return adjust


def _top(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Each query's first `k` hits."""
    return {query: dict(islice(hits.items(), k)) for query, hits in run.items()}


def _seen_split(settings: EvaluateSettings, dataset: Any) -> str | None:
    """The split whose relevant documents count as seen: as given, none, or (auto) the model's training split
    when its training_config.json says it was trained on this collection, else the collection's "train" split
    (so that an untrained model's row compares with a trained one's), else none."""
    choice = settings.seen_split
    if choice == "none":
        return None
    if choice != "auto":
        if choice not in dataset.splits():
            raise SbmoeError(
                f"seen_split {choice!r}: {dataset.name} has no such split; it has {dataset.splits()}"
            )
        if choice == settings.split:
            raise SbmoeError(f"seen_split {choice!r} is the evaluated split: every document would be seen")
        return choice
    trained = trained_on(settings.model)
    split = trained[1] if trained is not None and dataset.name in trained[0] else "train"
    return split if split in dataset.splits() and split != settings.split else None


def _views(
    settings: EvaluateSettings,
    found: Retrieval,
    pooled: PooledCollection,
    qrels: dict[str, dict[str, int]],
    seen: set[str],
    result: MetricResult,
    drop_self_hits: bool,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The views of `sbmoe.evaluation.views`: the unseen-documents run is a search of the same embeddings
    over the documents that are not seen (exact; its depth is top_k, so Recall@100 is exact too)."""
    kept_rows = np.array(
        [row for row, doc in enumerate(pooled.document_ids) if doc not in seen], dtype=np.int64
    )
    kept_qrels = unseen_qrels(qrels, seen)
    unseen = None
    if kept_qrels and len(kept_rows):
        k = settings.top_k + 1 if drop_self_hits else settings.top_k
        scores, rows = search(
            found.query_embeddings, found.document_embeddings[kept_rows], k, backend=settings.backend
        )
        kept_ids = [pooled.document_ids[row] for row in kept_rows]
        run = to_run(pooled.query_ids, kept_ids, scores, rows)
        if drop_self_hits:
            run = _top(remove_self_hits(run), settings.top_k)
        unseen = evaluate_run(run, kept_qrels, METRICS)
    return view_summary(result.per_query, qrels, seen, unseen, METRICS)


def _approximate_search(
    settings: EvaluateSettings,
    doc_embeddings: np.ndarray,
    query_embeddings: np.ndarray,
    k: int,
    exact_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Search an approximate index over the documents; report its cost and its recall against exact."""
    ann = ann_settings(settings.index_type, *doc_embeddings.shape, **(settings.index_settings or {}))
    tick = time.perf_counter()
    index = build_ann_index(doc_embeddings, settings.index_type, ann)
    build_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    scores, rows = ann_search(
        index, query_embeddings, k, embeddings=doc_embeddings, refine=ann.get("refine", 0)
    )
    report = {
        "type": settings.index_type,
        "settings": ann,
        "build_seconds": round(build_seconds, 3),
        "search_seconds": round(time.perf_counter() - tick, 3),
        "k": exact_rows.shape[1],
        "recall_vs_exact": round(recall_against_exact(rows, exact_rows), 4),  # share of exact top-k found
    }
    logger.info("%s index: recall against exact search %s", settings.index_type, report)
    return scores, rows, report


def _check_modes(modes: tuple[str, ...] | None, model: SBMoEModel) -> tuple[str | None, ...]:
    """The routing modes to evaluate; (None,) for a model without an MoE block."""
    if model.moe is None:
        if modes:
            raise SbmoeError(
                f"--mode {','.join(modes)}: this model has no MoE block, so it has no routing modes"
            )
        return (None,)
    if not modes:
        return (model.config.default_mode,)
    for mode in modes:
        try:
            model.moe.check_mode(mode)
        except ValueError as error:
            raise SbmoeError(str(error)) from error
    return tuple(dict.fromkeys(modes))


def mode_folder(mode: str | None) -> str:
    """The folder name of a routing mode's results ("none" for a model without the block)."""
    return "none" if mode is None else mode.replace(":", "-")


def _expert_counts(
    model: SBMoEModel, query_experts: np.ndarray | None, doc_experts: np.ndarray | None
) -> dict[str, list[int]] | None:
    """How many queries and documents have each expert as their top choice (a last bin for the null
    expert when the block has one); documents None when they skip a query-side block."""
    if query_experts is None:
        return None
    block = model.moe
    return {
        side: None if experts is None else expert_counts(experts, block.num_experts, block.has_null_expert)
        for side, experts in (("queries", query_experts), ("documents", doc_experts))
    }


def _run_tag(model: str) -> str:
    """The model's folder or hub name, usable as a TREC run tag (no whitespace)."""
    return "_".join((Path(model.rstrip("/")).name or "sbmoe").split())


def _decide_self_hits(choice: str, dataset: Any) -> bool:
    """With "auto", drop hits whose id equals the query id only where queries are corpus documents."""
    if choice == "auto":
        decided = dataset.queries_are_documents()
        if decided:
            logger.info("%s: queries are corpus documents; dropping query-id == doc-id hits", dataset.name)
        return decided
    return choice == "yes"


def format_table(summaries: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> str:
    """A plain-text table: one row per result, one column per metric, then nDCG@10 in each view of
    `sbmoe.evaluation.views` when the results have them (and a line saying what the views hold)."""
    views = [view for view in VIEWS if any(view_metric(view, "ndcg@10") in s for s in summaries)]
    columns = [*metrics, *(view_metric(view, "ndcg@10") for view in views)]
    header = ["dataset", "split", "model", "mode", *columns]
    rows = [
        [
            s["dataset"], s["split"], Path(s["model"]).name, s.get("mode") or "-",
            *(f"{s[m]:.4f}" if m in s else "-" for m in columns),
        ]
        for s in summaries
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    described = next((s["views"] for s in summaries if s.get("views")), None)
    if described:
        counts = ", ".join(
            f"{view} {described[view]['num_queries']} queries"
            + (
                f" ({described[view]['dropped_queries']} left without a relevant document)"
                if view == VIEWS[0]
                else ""
            )
            for view in VIEWS
        )
        lines.append(
            f"views against split {described['seen_split']} "
            f"({described['seen_documents']} relevant documents seen): {counts}"
        )
    fitted = next((s["memorisation"] for s in summaries if s.get("memorisation")), None)
    if fitted:
        lines.append(
            f"{fitted['method']} fitted on {fitted['fit_queries']} {fitted['split']} queries "
            f"({fitted['documents']} documents), step {fitted['step']:g} chosen on "
            f"{fitted['validation_queries']} held-out queries"
        )
    return "\n".join(lines)
