"""Statistics of routing decisions: expert shares, activated experts, entropy, query-document agreement.

Every text is counted ONCE, by the expert its routing actually chose. (The authors' counting ran the gate
twice, on the pooled and on the post-MoE embedding, so every text was counted twice and half the counts
came from an input the gate never routes; see SBMOE.md, flaw 5.)

E = number of experts. A block with a null expert (texts it passes through unchanged) reports those texts
as expert E: with `null_expert=True` counts and shares get a last bin for it, and activated experts count
the E real ones only. Inputs are numpy arrays; outputs are plain Python values, ready for JSON. Counts and
entropies are those of `sbmoe.modeling.routing_stats`, shared with training and evaluation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sbmoe.modeling.routing_stats import (
    count_shares,
    expert_counts,
    normalized_routing_entropy,
    routing_entropy,
)

if TYPE_CHECKING:
    from sbmoe.modeling.model import SBMoEModel
    from sbmoe.retrieval.encode import Pooled

ACTIVE_SHARE = 0.01  # the paper counts an expert as activated when it receives at least 1 % of texts


def active_experts(counts: Sequence[int], min_share: float = ACTIVE_SHARE, total: int | None = None) -> int:
    """How many experts receive at least `min_share` of the texts (the paper's "activated experts").

    total: the number of texts when `counts` leaves some out (those of the null expert); default sum(counts).
    """
    total = sum(counts) if total is None else total
    return sum(1 for count in counts if total and count >= min_share * total)


def route(model: SBMoEModel, pooled: Pooled, mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What the block returns for pooled texts in routing `mode` (None: the model's default), eval mode:
    each text's top expert [N] (E for the null expert) and the router's probabilities [N, E] (softmax(z),
    the normalised sigmoid gates, or one-hot nearest prototypes: `SBMoEBlock.probabilities` of the
    block's router logits). Under RANDOM-GATE the experts are its random choice; the probabilities stay
    the gate's. Every text is routed as a query is: the routing depends on the pooled vector (and key)
    alone, so for a query-side block, whose documents skip it, a document's expert is the one the block
    would give it."""
    from sbmoe.retrieval.encode import head_batches

    if model.moe is None:
        raise ValueError("this model has no MoE block, so it has no routing")
    experts = np.empty(len(pooled), dtype=np.int64)
    probabilities = np.empty((len(pooled), model.config.num_experts), dtype=np.float32)
    for rows, out in head_batches(model, pooled, mode, kind="query"):
        experts[rows] = out.selected_experts[:, 0].cpu().numpy()
        probabilities[rows] = model.moe.probabilities(out.router_logits).float().cpu().numpy()
    return experts, probabilities


def expert_shares(experts: np.ndarray, num_experts: int, null_expert: bool = False) -> list[float]:
    """Share of texts whose top-1 expert is i, for i in 0..E-1 (and the null expert last when
    `null_expert`); sums to 1, all zeros when N = 0.

    experts: [N] top-1 expert per text; each text counted once.
    """
    return count_shares(expert_counts(experts, num_experts, null_expert))


def usage_statistics(counts: Sequence[int], num_experts: int) -> dict[str, Any]:
    """How evenly texts spread over the experts, from top-1 counts: [E] per expert, or [E + 1] with the null
    expert's texts last.

    Returns {"active_experts": `active_experts` of the E experts over all texts, "top_share": the largest
    expert's share of all texts, "normalized_entropy": the entropy of the E experts' shares among the texts
    routed to an expert over log E (1 = balanced, 0 = one expert takes them all; 0 when E = 1 or no text
    reached an expert), "null_share": the null expert's share (None without that bin)}.
    """
    if len(counts) not in (num_experts, num_experts + 1):
        raise ValueError(
            f"expected {num_experts} counts (or {num_experts + 1} with a null expert), got {len(counts)}"
        )
    experts = list(counts[:num_experts])
    shares = count_shares(counts)
    return {
        "active_experts": active_experts(experts, total=sum(counts)),
        "top_share": max(shares[:num_experts]),
        "normalized_entropy": normalized_routing_entropy(np.asarray([count_shares(experts)])),
        "null_share": shares[num_experts] if len(counts) > num_experts else None,
    }


def shared_expert_rate(
    query_experts: Mapping[str, int],
    doc_experts: Mapping[str, int],
    qrels: Mapping[str, Mapping[str, int]],
) -> dict[str, Any]:
    """How often a query and its relevant documents are routed to the same top-1 expert.

    Pairs are (query, document with grade >= 1) judged in `qrels` ({query id: {doc id: grade}}) whose two
    texts both appear in the expert maps. Returns {"pairs": n, "same_expert": share of pairs with the same
    expert (None when n = 0), "chance": sum_i q_share_i * d_share_i}, where the shares are taken over all
    texts in `query_experts` and `doc_experts`: the agreement expected if routing ignored relevance.
    """
    pairs = same = 0
    for query_id, judged in qrels.items():
        if query_id not in query_experts:
            continue
        for doc_id, grade in judged.items():
            if grade >= 1 and doc_id in doc_experts:
                pairs += 1
                same += int(query_experts[query_id]) == int(doc_experts[doc_id])
    query_counts = Counter(int(e) for e in query_experts.values())
    doc_counts = Counter(int(e) for e in doc_experts.values())
    num_queries, num_docs = len(query_experts), len(doc_experts)
    chance = (
        sum(count * doc_counts.get(expert, 0) for expert, count in query_counts.items())
        / (num_queries * num_docs)
        if num_queries and num_docs
        else 0.0
    )
    return {"pairs": pairs, "same_expert": same / pairs if pairs else None, "chance": chance}


def top1_experts(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 expert of each text [N] (int64) from routing probabilities [N, E]."""
    return np.asarray(probabilities).argmax(axis=1).astype(np.int64)


def _side_summary(
    probabilities: np.ndarray, experts: np.ndarray, num_experts: int, null_expert: bool
) -> dict[str, Any]:
    counts = expert_counts(experts, num_experts, null_expert)
    total = sum(counts)
    p = np.asarray(probabilities, dtype=np.float64)
    return {
        "count": total,
        "counts": counts,
        "shares": count_shares(counts),
        "active_experts": active_experts(counts[:num_experts], total=total),
        "entropy": routing_entropy(p),
        "normalized_entropy": normalized_routing_entropy(p),
        "mean_top_probability": float(p.max(axis=1).mean()) if len(p) else 0.0,
    }


def routing_summary(
    query_probs: np.ndarray,
    doc_probs: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    query_experts: np.ndarray | None = None,
    doc_experts: np.ndarray | None = None,
    null_expert: bool = False,
) -> dict[str, Any]:
    """Routing statistics of queries and documents, JSON-able.

    query_probs [Nq, E], doc_probs [Nd, E]: the gate's routing probabilities, rows in the order of
    `query_ids` / `doc_ids`. query_experts [Nq], doc_experts [Nd]: the expert each text was routed to
    (default: the argmax of its probabilities; pass them when routing is not the gate's, as under
    RANDOM-GATE, or with a null expert, reported as E). null_expert: counts and shares get a last bin for
    it. Returns {"num_experts", "null_expert", "active_share", "queries": {...}, "documents": {...},
    "shared_expert": {...}}, where each side has count, counts, shares, active_experts, entropy (nats),
    normalized_entropy and mean_top_probability, and "shared_expert" is `shared_expert_rate`.
    """
    query_probs, doc_probs = np.asarray(query_probs), np.asarray(doc_probs)
    if query_probs.ndim != 2 or doc_probs.ndim != 2 or query_probs.shape[1] != doc_probs.shape[1]:
        raise ValueError(
            f"probabilities must be [Nq, E] and [Nd, E], got {query_probs.shape} and {doc_probs.shape}"
        )
    if len(query_ids) != len(query_probs) or len(doc_ids) != len(doc_probs):
        raise ValueError(
            f"{len(query_ids)} query ids for {len(query_probs)} rows, "
            f"{len(doc_ids)} document ids for {len(doc_probs)} rows"
        )
    num_experts = query_probs.shape[1]
    query_experts = top1_experts(query_probs) if query_experts is None else np.asarray(query_experts)
    doc_experts = top1_experts(doc_probs) if doc_experts is None else np.asarray(doc_experts)
    if len(query_experts) != len(query_ids) or len(doc_experts) != len(doc_ids):
        raise ValueError("query_experts / doc_experts must have one entry per id")
    return {
        "num_experts": num_experts,
        "null_expert": null_expert,
        "active_share": ACTIVE_SHARE,
        "queries": _side_summary(query_probs, query_experts, num_experts, null_expert),
        "documents": _side_summary(doc_probs, doc_experts, num_experts, null_expert),
        "shared_expert": shared_expert_rate(
            dict(zip(query_ids, query_experts.tolist(), strict=True)),
            dict(zip(doc_ids, doc_experts.tolist(), strict=True)),
            qrels,
        ),
    }
