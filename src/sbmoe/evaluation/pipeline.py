"""The one embed-and-search path shared by `sbmoe evaluate`, `sbmoe analyze` and training's validation.

A collection's judged queries and its documents are pooled once (`pool_collection`, through the embedding
cache); each routing mode is then the model's head over the same pooled texts and a search
(`retrieve`). Scoring the run is one call to `sbmoe.evaluation.metrics.evaluate_run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sbmoe.data import judged_queries
from sbmoe.modeling.model import SBMoEModel
from sbmoe.retrieval.encode import EmbeddingCache, Pooled, apply_head, encode_cached
from sbmoe.retrieval.search import search, to_run


@dataclass(frozen=True)
class PooledCollection:
    """A collection's judged queries and its documents, pooled (see `sbmoe.retrieval.encode.Pooled`)."""

    query_ids: list[str]
    queries: Pooled
    document_ids: list[str]
    documents: Pooled
    documents_from_cache: bool
    seconds: dict[str, float]  # corpus_encoding, query_encoding


def pool_collection(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus,
    queries: Mapping[str, str],
    qrels: Mapping[str, object],
    *,
    cache: EmbeddingCache | None,
    batch_size: int = 32,
    device: torch.device | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> PooledCollection:
    """Pool every document of `corpus` (a `sbmoe.data.Corpus`) and every judged query, from the cache when
    it holds them. The texts and ids are always the same for a collection, so evaluation, analysis and the
    grids share one cache entry."""
    options = {
        "cache": cache,
        "batch_size": batch_size,
        "device": device,
        "progress": progress,
        "dtype": dtype,
    }
    tick = time.perf_counter()
    documents, from_cache = encode_cached(model, tokenizer, corpus.ids, corpus.document_texts(), **options)
    corpus_seconds = time.perf_counter() - tick
    query_ids, pooled_queries, query_seconds = pool_queries(model, tokenizer, queries, qrels, **options)
    return PooledCollection(
        query_ids=query_ids,
        queries=pooled_queries,
        document_ids=list(corpus.ids),
        documents=documents,
        documents_from_cache=from_cache,
        seconds={"corpus_encoding": corpus_seconds, "query_encoding": query_seconds},
    )


def pool_queries(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Mapping[str, str],
    qrels: Mapping[str, object],
    **options,
) -> tuple[list[str], Pooled, float]:
    """The judged queries of `qrels`: (their ids, pooled, seconds taken). options: of `encode_cached`."""
    tick = time.perf_counter()
    query_ids = judged_queries(queries, qrels)
    pooled, _ = encode_cached(
        model, tokenizer, query_ids, [queries[q] for q in query_ids], "query", **options
    )
    return query_ids, pooled, time.perf_counter() - tick


@dataclass(frozen=True)
class Retrieval:
    """One routing mode's embeddings, top experts (None without an MoE block) and exact top-k rows."""

    query_embeddings: np.ndarray  # [Nq, H]
    document_embeddings: np.ndarray  # [Nd, H]
    query_experts: np.ndarray | None  # [Nq]
    document_experts: np.ndarray | None  # [Nd]; None too when documents skip a query-side block
    scores: np.ndarray  # [Nq, k]
    indices: np.ndarray  # [Nq, k] rows of the documents

    def run(self, query_ids: Sequence[str], document_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The top-k as a run {query id: {document id: score}}."""
        return to_run(query_ids, document_ids, self.scores, self.indices)


def retrieve(
    model: SBMoEModel,
    queries: Pooled,
    documents: Pooled,
    k: int,
    mode: str | None = None,
    backend: str = "torch",
    adjust: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Retrieval:
    """The model's head over pooled queries and documents in routing `mode` (None: the model's default),
    then exact maximum-inner-product search for each query's top `k` documents (`backend`: see
    `sbmoe.retrieval.search.search`). adjust: applied to (query, document) embeddings before the search
    (NUDGE or the document prior, `sbmoe.evaluation.memorisation`)."""
    document_embeddings, document_experts = apply_head(model, documents, mode, kind="document")
    query_embeddings, query_experts = apply_head(model, queries, mode, kind="query")
    if adjust is not None:
        query_embeddings, document_embeddings = adjust(query_embeddings, document_embeddings)
    scores, indices = search(query_embeddings, document_embeddings, k, backend=backend)
    return Retrieval(query_embeddings, document_embeddings, query_experts, document_experts, scores, indices)
