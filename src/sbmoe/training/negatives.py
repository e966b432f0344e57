"""Hard negatives: candidate lists per query, from a run file or mined with BM25, and sampled per batch.

A hard negative is a document that a first-stage retriever ranks high for a query but that the qrels do
not mark relevant. Candidates are kept per query, best-ranked first (`Negatives`); training draws a few
of them per query with an explicit torch generator (`sample_negatives`).

Conventions shared by every function here:
- Relevant means a grade >= 1. Documents judged non-relevant (grade <= 0) are kept: a document someone
  looked at and rejected is a good negative.
- `depth` is the number of negatives kept per query: the `depth` best-ranked hits that are not relevant.
  A query may get fewer when its ranking has fewer such hits, or none.
- Order: score descending, ties by document id descending. This is the order in which
  `sbmoe.retrieval.trec` writes run files and in which trec_eval ranks them, so a run file's rank column
  and the negatives agree; it is also fully deterministic.
- Every query of the qrels gets an entry (possibly []), except in `mine_bm25_negatives`, which skips qrels
  queries whose text is not in `queries` (and logs how many).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sbmoe.data import Corpus, judged_queries
from sbmoe.errors import SbmoeError
from sbmoe.progress import progress_bar
from sbmoe.retrieval.trec import read_trec_run

logger = logging.getLogger(__name__)

Negatives = dict[str, list[str]]
"""query id -> candidate hard-negative document ids, best-ranked first."""

Qrels = dict[str, dict[str, int]]
"""query id -> {document id: grade}; a grade >= 1 is relevant."""


def negatives_from_run(run: dict[str, dict[str, float]], qrels: Qrels, depth: int = 100) -> Negatives:
    """The `depth` best-ranked non-relevant hits of `run` for every query of `qrels`.

    Hits are ordered by score descending, ties by document id descending (the module docstring says
    why); documents the qrels mark relevant (grade >= 1) are skipped, judged non-relevant ones kept.
    Queries of the qrels without hits in the run get [].

    Raises ValueError if depth < 1, and SbmoeError if the run and the qrels share no query id.
    """
    _check_depth(depth)
    _check_overlap(run, qrels, "the run")
    negatives: Negatives = {}
    for query_id, judged in qrels.items():
        hits = run.get(query_id, {})
        ranked = sorted(hits, key=lambda doc_id: (hits[doc_id], doc_id), reverse=True)
        negatives[query_id] = _non_relevant(ranked, judged, depth)
    _log_summary(negatives, "run")
    return negatives


def load_negatives_run(path: str | Path, qrels: Qrels, depth: int = 100) -> Negatives:
    """`negatives_from_run` on a TREC run file (``query_id Q0 doc_id rank score tag``).

    The ranking comes from the scores, not the rank column. Raises DataError for a malformed file (see
    `read_trec_run`), SbmoeError if the file shares no query id with the qrels, ValueError if depth < 1.
    """
    _check_depth(depth)
    run = read_trec_run(path)
    _check_overlap(run, qrels, f"run file {path}")
    return negatives_from_run(run, qrels, depth)


def mine_bm25_negatives(
    corpus: Corpus,
    queries: dict[str, str],
    qrels: Qrels,
    depth: int = 100,
    progress: bool = True,
) -> Negatives:
    """The `depth` best BM25-ranked non-relevant documents for every qrels query that has a text.

    Documents are indexed as `corpus.document_texts()` with bm25s (Lucene BM25, k1=1.5, b=0.75),
    lower-cased, English stop words removed, no stemming: everything runs offline. Documents scoring 0
    (no term in common with the query) are never negatives, so a query may get fewer than `depth`.
    Ties are broken by document id (see the module docstring), so the result is deterministic.
    Queries of the qrels missing from `queries` are skipped with a warning.

    Raises ValueError if depth < 1, and SbmoeError if the corpus is empty or bm25s is not installed.
    """
    _check_depth(depth)
    try:
        import bm25s
    except ImportError:
        raise SbmoeError("mining BM25 negatives needs the bm25s package: pip install bm25s") from None
    if len(corpus) == 0:
        raise SbmoeError("cannot mine BM25 negatives from an empty corpus")

    query_ids = judged_queries(queries, qrels)
    missing = len(qrels) - len(query_ids)
    if missing:
        logger.warning(
            "%d of %d qrels queries have no text in the queries and are skipped", missing, len(qrels)
        )

    start = time.perf_counter()
    corpus_tokens = bm25s.tokenize(
        corpus.document_texts(), lower=True, stopwords="en", stemmer=None, show_progress=progress
    )
    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=progress)
    # Query tokens as strings: the retriever maps them to its own vocabulary and drops unknown words.
    query_tokens = bm25s.tokenize(
        [queries[query_id] for query_id in query_ids],
        lower=True,
        stopwords="en",
        stemmer=None,
        return_ids=False,
        show_progress=progress,
    )

    doc_ids = np.asarray(corpus.ids, dtype=object)
    row_of = {doc_id: row for row, doc_id in enumerate(corpus.ids)}
    negatives: Negatives = {}
    for query_id, tokens in zip(
        progress_bar(query_ids, desc="Mining BM25 negatives", unit="query", progress=progress),
        query_tokens,
        strict=True,
    ):
        if not tokens:  # only stop words or no word at all: BM25 has nothing to score
            negatives[query_id] = []
            continue
        scores = retriever.get_scores(tokens)  # [N] float32
        relevant_rows = [row_of[d] for d, grade in qrels[query_id].items() if grade >= 1 and d in row_of]
        scores[relevant_rows] = 0.0  # relevant documents are never negatives
        rows = np.flatnonzero(scores > 0)
        if len(rows) > depth:
            # Keep every row scoring at least the depth-th best score: ties at the cut stay in, so the
            # id-ordered sort below (not argpartition's arbitrary choice) decides who is dropped.
            cut = np.partition(scores[rows], len(rows) - depth)[len(rows) - depth]
            rows = rows[scores[rows] >= cut]
        ranked = sorted(zip(scores[rows].tolist(), doc_ids[rows].tolist(), strict=True), reverse=True)
        negatives[query_id] = [doc_id for _, doc_id in ranked[:depth]]
    logger.info(
        "Mined BM25 negatives for %d queries over %d documents in %.1fs",
        len(negatives),
        len(corpus),
        time.perf_counter() - start,
    )
    _log_summary(negatives, "BM25")
    return negatives


def sample_negatives(
    negatives: Negatives, query_ids: Sequence[str], count: int, generator: torch.Generator
) -> list[list[str]]:
    """Draw `count` negatives per query, uniformly without replacement, reproducibly.

    For each query id in order, one `torch.randperm(len(candidates), generator=generator)` picks the
    draws, so the result depends only on the generator's state. A query with fewer candidates than
    `count` gets all of them (in random order), possibly [].

    Returns one list of document ids per query id. Raises ValueError if count < 0, and SbmoeError if a
    query id has no entry in `negatives` (negatives mined for another collection or split).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    draws: list[list[str]] = []
    for query_id in query_ids:
        try:
            candidates = negatives[query_id]
        except KeyError:
            raise SbmoeError(
                f"query {query_id!r} has no hard-negative entry: were the negatives made for another "
                "collection or split?"
            ) from None
        if count == 0 or not candidates:
            draws.append([])
            continue
        order = torch.randperm(len(candidates), generator=generator, device=generator.device)
        draws.append([candidates[i] for i in order[:count].tolist()])
    return draws


# ----------------------------------------------------------------------------------------------- helpers


def _check_depth(depth: int) -> None:
    if depth < 1:
        raise ValueError(f"depth must be >= 1 (negatives kept per query), got {depth}")


def _check_overlap(run: dict[str, dict[str, float]], qrels: Qrels, what: str) -> None:
    if run.keys().isdisjoint(qrels.keys()):
        example_run = ", ".join(repr(q) for q in sorted(run)[:3]) or "none"
        example_qrels = ", ".join(repr(q) for q in sorted(qrels)[:3]) or "none"
        raise SbmoeError(
            f"{what} has no query in common with the qrels ({len(run)} run queries, e.g. {example_run}; "
            f"{len(qrels)} qrels queries, e.g. {example_qrels}): it is likely the run of another "
            "collection or split"
        )


def _non_relevant(ranked: list[str], judged: dict[str, int], depth: int) -> list[str]:
    """The first `depth` ids of `ranked` that `judged` does not grade >= 1."""
    kept: list[str] = []
    for doc_id in ranked:
        if judged.get(doc_id, 0) < 1:
            kept.append(doc_id)
            if len(kept) == depth:
                break
    return kept


def _log_summary(negatives: Negatives, source: str) -> None:
    sizes = [len(candidates) for candidates in negatives.values()]
    if not sizes:
        return
    logger.info(
        "%s negatives: %d queries, %.1f per query on average (min %d, max %d), %d queries with none",
        source,
        len(sizes),
        sum(sizes) / len(sizes),
        min(sizes),
        max(sizes),
        sizes.count(0),
    )
