"""Evaluate one retriever on one collection split: encode, search, score, write artifacts.

Writes to the output folder: metrics.json (aggregate and per-query), run.trec, settings.json (the
resolved settings, the model's config and provenance).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from sbmoe.data import load_dataset
from sbmoe.evaluation.metrics import METRICS, evaluate_run, remove_self_hits
from sbmoe.io import provenance, write_json
from sbmoe.modeling.loading import load_model
from sbmoe.retrieval.encode import EmbeddingCache, apply_head, default_device, encode_corpus, encode_pooled
from sbmoe.retrieval.search import BACKENDS, search, to_run
from sbmoe.retrieval.trec import write_trec_run

logger = logging.getLogger(__name__)

SELF_HIT_CHOICES = ("auto", "yes", "no")


@dataclass
class EvaluateSettings:
    """What `sbmoe evaluate` does. None for a model setting keeps the model's own value."""

    model: str
    dataset: str
    split: str = "test"
    data_dir: str | None = None
    output_dir: str | None = None
    batch_size: int = 32
    top_k: int = 1000
    drop_self_hits: str = "auto"
    backend: str = "torch"
    pooling: str | None = None
    normalize: bool | None = None
    query_max_length: int | None = None
    document_max_length: int | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.drop_self_hits not in SELF_HIT_CHOICES:
            raise ValueError(
                f"drop_self_hits must be one of {list(SELF_HIT_CHOICES)}, got {self.drop_self_hits!r}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        for field in ("batch_size", "top_k"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")

    def resolved_output_dir(self, dataset_name: str) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        model_tag = Path(self.model.rstrip("/")).name or "model"
        return Path("runs") / "evaluate" / f"{dataset_name}-{self.split}-{model_tag}"


def evaluate(settings: EvaluateSettings) -> dict[str, Any]:
    """Run the evaluation and write its artifacts. Returns the summary written to metrics.json."""
    started = time.perf_counter()
    dataset = load_dataset(settings.dataset, settings.data_dir)
    qrels = dataset.qrels(settings.split)
    corpus, queries = dataset.corpus, dataset.queries  # read (and validated) before the model loads
    output_dir = settings.resolved_output_dir(dataset.name)
    drop_self_hits = _decide_self_hits(settings.drop_self_hits, dataset)

    model, tokenizer = load_model(
        settings.model,
        pooling=settings.pooling,
        normalize=settings.normalize,
        query_max_length=settings.query_max_length,
        document_max_length=settings.document_max_length,
        trust_remote_code=settings.trust_remote_code,
    )
    device = default_device()
    model.to(device)

    cache = EmbeddingCache(settings.cache_dir) if settings.use_cache else None
    tick = time.perf_counter()
    pooled_docs, from_cache = encode_corpus(
        model,
        tokenizer,
        corpus.ids,
        corpus.document_texts(),
        cache=cache,
        batch_size=settings.batch_size,
        device=device,
        progress=settings.progress,
    )
    corpus_seconds = time.perf_counter() - tick
    if from_cache:
        logger.info("Corpus embeddings came from the cache: no encoding needed")

    query_ids = [query_id for query_id in qrels if query_id in queries]
    tick = time.perf_counter()
    pooled_queries = encode_pooled(
        model,
        tokenizer,
        [queries[q] for q in query_ids],
        "query",
        batch_size=settings.batch_size,
        device=device,
        progress=settings.progress,
    )
    query_seconds = time.perf_counter() - tick

    tick = time.perf_counter()
    doc_embeddings = apply_head(model, pooled_docs)
    query_embeddings = apply_head(model, pooled_queries)
    # One extra hit per query so that dropping a self-hit still leaves top_k.
    k = settings.top_k + 1 if drop_self_hits else settings.top_k
    scores, indices = search(query_embeddings, doc_embeddings, k, backend=settings.backend)
    run = to_run(query_ids, corpus.ids, scores, indices)
    if drop_self_hits:
        run = remove_self_hits(run)
        run = {
            q: dict(islice(hits.items(), settings.top_k)) for q, hits in run.items()
        }  # hits are best first
    search_seconds = time.perf_counter() - tick

    result = evaluate_run(run, qrels, METRICS)
    summary = {
        "dataset": dataset.name,
        "split": settings.split,
        "model": settings.model,
        **result.aggregate,
        "num_queries": result.num_queries,
        "drop_self_hits": drop_self_hits,
        "corpus_from_cache": from_cache,
        "seconds": {
            "corpus_encoding": round(corpus_seconds, 3),
            "query_encoding": round(query_seconds, 3),
            "search": round(search_seconds, 3),
            "total": round(time.perf_counter() - started, 3),
        },
        "per_query": result.per_query,
    }
    write_trec_run(run, output_dir / "run.trec", tag=_run_tag(settings.model))
    write_json(output_dir / "metrics.json", summary)
    write_json(
        output_dir / "settings.json",
        {
            "settings": asdict(settings),
            "model_config": model.config.to_dict(),
            "dataset_path": str(dataset.path),
            "provenance": provenance(),
        },
    )
    summary["output_dir"] = str(output_dir)
    return summary


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
    """A plain-text table: one row per result, one column per metric."""
    header = ["dataset", "split", "model", *metrics]
    rows = [
        [s["dataset"], s["split"], Path(s["model"]).name, *(f"{s[m]:.4f}" for m in metrics)]
        for s in summaries
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
