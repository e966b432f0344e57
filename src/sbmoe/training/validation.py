"""Validation during training: each collection's validation queries searched against its documents,
scored with `sbmoe.evaluation.metrics`. `sbmoe.training.trainer.validate` is this `validate`."""

from __future__ import annotations

import statistics

from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.modeling.precision import resolve_dtype
from sbmoe.retrieval.encode import apply_head, encode_pooled, text_routing_keys
from sbmoe.retrieval.search import exact_search, to_run
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
    model.train()
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
        rows, table = collection.pooled["document"]
        pooled_docs = table[[rows[i] for i in doc_ids]].numpy()
        rows, table = collection.pooled["query"]
        pooled_queries = table[[rows[i] for i in query_ids]].numpy()
    else:
        dtype = resolve_dtype(config.dtype, device)
        pooled_docs = encode_pooled(
            model, tokenizer, _document_texts(collection, doc_ids), "document",
            batch_size=config.encode_batch_size, device=device, progress=False, dtype=dtype,
        )  # fmt: skip
        pooled_queries = encode_pooled(
            model, tokenizer, [queries[q] for q in query_ids], "query",
            batch_size=config.encode_batch_size, device=device, progress=False, dtype=dtype,
        )  # fmt: skip
    doc_keys = query_keys = None
    if model.moe is not None and model.config.default_mode == "random":  # RANDOM-GATE routes by text
        if collection.validation_keys is None:  # tokenising the corpus at every epoch would dominate
            limits = model.config.document_max_length, model.config.query_max_length
            collection.validation_keys = (
                text_routing_keys(tokenizer, _document_texts(collection, doc_ids), limits[0]),
                text_routing_keys(tokenizer, [queries[q] for q in query_ids], limits[1]),
            )
        doc_keys, query_keys = collection.validation_keys
    doc_embeddings, _ = apply_head(model, pooled_docs, keys=doc_keys)
    query_embeddings, _ = apply_head(model, pooled_queries, keys=query_keys)
    scores, indices = exact_search(query_embeddings, doc_embeddings, k=100)
    run = to_run(query_ids, doc_ids, scores, indices)
    qrels = {q: collection.validation_qrels[q] for q in query_ids}
    return evaluate_run(run, qrels).aggregate


def _document_texts(collection: CollectionData, ids: list[str]) -> list[str]:
    return collection.document_texts(ids)
