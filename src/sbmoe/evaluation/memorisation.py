"""NUDGE and the document prior fitted to a model's embeddings, their step chosen on validation queries.

The queries of the fitting split (e.g. "train") are split as the NUDGE paper does: most fit (their relevant
documents are moved, or boosted), a random tenth validates each step of the grid
(`sbmoe.retrieval.nudge.NUDGE_STEPS`, `PRIOR_STEPS`) by nDCG@10 against the whole corpus; the best step
(the smallest among ties) is kept. The validation queries share relevant documents with the fitting ones
just as an overlapping test split does, which is the setting these baselines are built for. (The NUDGE paper
solves NUDGE-M's step exactly for accuracy@1; a grid on nDCG@10 serves both variants and the prior alike.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbmoe.data.splits import hold_out, relevant
from sbmoe.errors import SbmoeError
from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.retrieval.nudge import NUDGE_STEPS, PRIOR_STEPS, nudge, query_sums, with_prior
from sbmoe.retrieval.search import search, to_run

logger = logging.getLogger(__name__)

METHODS = ("nudge", "prior")
VALIDATION_METRIC = "ndcg@10"

Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(query embeddings, document embeddings) -> the same, adjusted."""


@dataclass
class Fitted:
    """A fitted memorisation baseline: what it is, the step chosen, and the adjustment itself."""

    method: str  # nudge-n, nudge-m or prior
    split: str
    step: float
    validation: dict[str, float]  # each step tried -> validation nDCG@10
    fit_queries: int
    validation_queries: int
    documents: int  # documents moved (NUDGE) or boosted (prior)
    transform: Transform = field(repr=False)

    def report(self) -> dict[str, Any]:
        """What metrics.json records of the fit."""
        return {
            "method": self.method, "split": self.split, "step": self.step,
            "fit_queries": self.fit_queries, "validation_queries": self.validation_queries,
            "documents": self.documents, f"validation_{VALIDATION_METRIC}": self.validation,
        }  # fmt: skip


def fit_memorisation(
    method: str,
    split: str,
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    queries: np.ndarray,
    document_ids: Sequence[str],
    documents: np.ndarray,
    *,
    variant: str = "n",
    share: float = 0.1,
    seed: int = 42,
) -> Fitted:
    """Fit `method` ("nudge" or "prior") on the judgements `qrels` of `split`, whose queries `query_ids` have
    the embeddings `queries` [Q, H] (the model's, in the routing mode evaluated); documents [N, H] likewise.

    Raises SbmoeError when the split has fewer than two queries with a relevant document in the corpus."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    row_of = {doc: row for row, doc in enumerate(document_ids)}
    positives = {
        query: sorted(row_of[doc] for doc in relevant(qrels[query]) if doc in row_of) for query in query_ids
    }
    positives = {query: rows for query, rows in positives.items() if rows}
    if len(positives) < 2:
        raise SbmoeError(
            f"{method} on split {split!r}: {len(positives)} queries with a relevant document in the corpus; "
            "at least two are needed (one to fit, one to choose the step)"
        )
    fit_ids, validation_ids = hold_out(positives, share, seed, kind="queries")
    embedding_of = {query: row for row, query in enumerate(query_ids)}
    fit_queries = queries[[embedding_of[q] for q in fit_ids]]
    fit_rows = [positives[q] for q in fit_ids]

    if method == "nudge":
        sums = query_sums(len(documents), fit_queries, fit_rows)
        moved = int((np.linalg.norm(sums, axis=1) > 0).sum())

        def make(step: float) -> Transform:
            return lambda q, d: (q, nudge(d, sums, step, variant))

        steps, name = NUDGE_STEPS[variant], f"nudge-{variant}"
    else:
        boosted = np.zeros(len(documents), dtype=bool)
        boosted[[row for rows in fit_rows for row in rows]] = True
        moved = int(boosted.sum())

        def make(step: float) -> Transform:
            return lambda q, d: with_prior(q, d, boosted, step)

        steps, name = PRIOR_STEPS, "prior"

    validation_queries = queries[[embedding_of[q] for q in validation_ids]]
    validation_qrels = {q: dict(qrels[q]) for q in validation_ids}
    scores = {}
    for step in steps:
        q, d = make(step)(validation_queries, documents)
        found, rows = search(q, d, k=min(100, len(d)))
        run = to_run(validation_ids, document_ids, found, rows)
        scores[step] = evaluate_run(run, validation_qrels, (VALIDATION_METRIC,)).aggregate[VALIDATION_METRIC]
    best = max(steps, key=lambda step: (scores[step], -step))
    logger.info(
        "%s on %s: step %g chosen on %d validation queries (%s %.4f; step 0: %.4f); %d documents from %d "
        "queries", name, split, best, len(validation_ids), VALIDATION_METRIC, scores[best], scores[steps[0]],
        moved, len(fit_ids),
    )  # fmt: skip
    return Fitted(
        method=name,
        split=split,
        step=best,
        validation={f"{step:g}": round(value, 6) for step, value in scores.items()},
        fit_queries=len(fit_ids),
        validation_queries=len(validation_ids),
        documents=moved,
        transform=make(best),
    )
