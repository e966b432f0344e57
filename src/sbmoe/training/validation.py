"""Validation during training: each collection's validation queries searched against its documents,
scored with `sbmoe.evaluation.metrics`. `sbmoe.training.trainer.validate` is this `validate`."""

from __future__ import annotations

import statistics

from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.evaluation.pipeline import retrieve
from sbmoe.modeling.precision import resolve_dtype
from sbmoe.retrieval.encode import encode_pooled
from sbmoe.training.config import TrainingConfig
from sbmoe.training.data import CollectionData, TrainingData


def validate(model, tokenizer, data: TrainingData, config: TrainingConfig, device) -> dict[str, float]:
    """Metrics of the validation queries against their corpus. Several collections: each is validated on
    its own, and the result holds each metric's mean over the collections and every collection's own
    metrics as "<collection>/<metric>"."""
    per_collection = {
        collection.name: _validate_collection(model, tokenizer, collection, config, device)
        for collection in data.collections
    }
    if len(per_collection) == 1:
        return next(iter(per_collection.values()))
    names = list(next(iter(per_collection.values())))
    means = {name: statistics.fmean(metrics[name] for metrics in per_collection.values()) for name in names}
    return means | {
        f"{collection}/{name}": value
        for collection, metrics in per_collection.items()
        for name, value in metrics.items()
    }


def _validate_collection(
    model, tokenizer, collection: CollectionData, config: TrainingConfig, device
) -> dict[str, float]:
    """One collection's validation queries searched against its corpus (all of it, or positives + sampled
    distractors)."""
    queries = collection.dataset.queries
    query_ids = [e.query_id for e in collection.validation]
    doc_ids = collection.validation_doc_ids
    if collection.pooled is not None:
        pooled_docs = collection.pooled["document"].take(doc_ids)
        pooled_queries = collection.pooled["query"].take(query_ids)
    else:
        dtype = resolve_dtype(config.dtype, device)
        pooled_docs = encode_pooled(
            model, tokenizer, collection.document_texts(doc_ids), "document",
            batch_size=config.encode_batch_size, device=device, progress=False, dtype=dtype,
        )  # fmt: skip
        pooled_queries = encode_pooled(
            model, tokenizer, [queries[q] for q in query_ids], "query",
            batch_size=config.encode_batch_size, device=device, progress=False, dtype=dtype,
        )  # fmt: skip
    run = retrieve(model, pooled_queries, pooled_docs, k=100).run(query_ids, doc_ids)
    qrels = {q: collection.validation_qrels[q] for q in query_ids}
    return evaluate_run(run, qrels).aggregate
