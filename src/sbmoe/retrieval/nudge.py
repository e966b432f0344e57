"""NUDGE and the document prior: two ways to score training documents higher without training a model.

NUDGE (Zeighami, Wellmer and Parameswaran, "NUDGE: Lightweight Non-Parametric Fine-Tuning of Embeddings for
Retrieval", ICLR 2025, arXiv 2409.02343) moves the embedding of every document that training queries judged
relevant towards the sum g of those queries' embeddings, within a step gamma:

- NUDGE-M (variant "m"): d' = d + gamma * g / |g|, on the unit sphere's direction of d (a bounded move,
  no renormalisation);
- NUDGE-N (variant "n"): the unit vector closest to g's direction with |d' - d|^2 <= gamma: g's direction
  itself when it is within the step, else d rotated towards g by the angle whose chord is sqrt(gamma).

The paper normalises every document first; here a document keeps its own norm (the move is made on its unit
direction and scaled back), so that a document no training query judged is left exactly as it was, for any
model. Queries are never changed.

The document prior adds beta to the score of every document some training query judged relevant: an extra
dimension, 1 for every query and beta for those documents, so that any inner-product search applies it.

Both are memorisation baselines: they improve a test query only if its relevant documents were training
positives (`sbmoe.evaluation.views` measures exactly that). The step is chosen on validation queries
(`sbmoe.evaluation.memorisation`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sbmoe.retrieval.choices import NUDGE_VARIANTS

NUDGE_STEPS = {  # the validation grid of each variant
    "n": tuple(round(0.02 * i, 2) for i in range(51)),  # |d' - d|^2 <= gamma, d' on the unit sphere
    "m": tuple(round(0.05 * i, 2) for i in range(41)),  # |d' - d| = gamma (unit directions)
}
PRIOR_STEPS = tuple(round(0.01 * i, 2) for i in range(31))  # beta, added to a cosine-like score


def query_sums(num_documents: int, queries: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """g: [num_documents, H], each document's sum of the embeddings of the queries that judge it relevant
    (`positives[i]`: the document rows of query i); zero for the others."""
    sums = np.zeros((num_documents, queries.shape[1]), dtype=np.float64)
    for query, rows in zip(queries, positives, strict=True):
        for row in set(rows):
            sums[row] += query
    return sums


def nudge(documents: np.ndarray, sums: np.ndarray, gamma: float, variant: str = "n") -> np.ndarray:
    """The documents [N, H] nudged towards `sums` (`query_sums`) with step `gamma`; rows whose sum is zero
    (no training query) are returned unchanged, bit for bit. A new array; the input is not modified."""
    if variant not in NUDGE_VARIANTS:
        raise ValueError(f"NUDGE variant must be one of {NUDGE_VARIANTS}, got {variant!r}")
    if gamma < 0:
        raise ValueError(f"NUDGE step must be >= 0, got {gamma!r}")
    result = np.array(documents, dtype=np.float32, copy=True)
    g_norm = np.linalg.norm(sums, axis=1)
    d_norm = np.linalg.norm(documents, axis=1).astype(np.float64)
    rows = np.flatnonzero((g_norm > 0) & (d_norm > 0))
    if gamma == 0 or not len(rows):
        return result
    unit = documents[rows].astype(np.float64) / d_norm[rows, None]
    direction = sums[rows] / g_norm[rows, None]
    if variant == "m":
        moved = unit + gamma * direction
    else:
        cosine = np.einsum("ij,ij->i", unit, direction)
        floor = 1.0 - gamma / 2.0  # |u' - u|^2 <= gamma  <=>  u . u' >= 1 - gamma / 2
        across = direction - cosine[:, None] * unit  # g's part orthogonal to u
        across_norm = np.linalg.norm(across, axis=1)
        turned = floor * unit + np.sqrt(max(0.0, 1.0 - floor**2)) * (
            across / np.where(across_norm > 0, across_norm, 1.0)[:, None]
        )
        reach = cosine >= floor  # g's own direction is within the step
        moved = np.where(reach[:, None], direction, np.where(across_norm[:, None] > 0, turned, unit))
    result[rows] = (moved * d_norm[rows, None]).astype(np.float32)
    return result


def with_prior(
    queries: np.ndarray, documents: np.ndarray, boosted: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Queries and documents with one more dimension, so that a query's inner product with a document gains
    `beta` exactly when `boosted` (a bool [N] over the documents) holds."""
    extra_queries = np.ones((len(queries), 1), dtype=np.float32)
    extra_documents = (beta * boosted).astype(np.float32)[:, None]
    return (
        np.hstack([queries.astype(np.float32), extra_queries]),
        np.hstack([documents.astype(np.float32), extra_documents]),
    )
