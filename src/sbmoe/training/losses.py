"""Contrastive loss for dense retrieval, with in-batch negatives, optional hard negatives and masking.

B = queries in the batch, C = document columns (C >= B), H = embedding size, tau = temperature.
Columns 0..B-1 hold the in-batch positives (column i is query i's positive); columns B..C-1 hold any
hard negatives.

    scores          S = (Q · D^T) / tau                                     [B, C], float32
    query->doc      L_qd = mean_i CE(S[i, :], target i)
    doc->query      L_dq = mean_i CE(S[:, i], target i)   over the first B columns (optional)
    loss            L_qd, or (L_qd + L_dq) / 2 when symmetric; plus the model's weighted aux loss

The paper's authors (Sokli et al., arXiv 2510.15683) compute S = (Q / tau) · D^T, the same scores up to
float rounding, and train with cross-entropy over in-batch negatives only, query->document only, with no
masking. Passing `mask=None` (and no hard negatives, symmetric=False) reproduces that loss exactly.

Our default masks false negatives: a column whose document is judged relevant (grade >= 1) to query i is
not used as a negative for query i. This covers the same document drawn as the positive of two queries in
one batch, a second positive of a query sitting in the batch as someone else's positive, and a hard
negative that is in fact relevant. A masked logit is set to -inf, so it is neither a negative nor a target;
the target column itself is never masked, so every row keeps at least one finite logit and a row with
nothing else left has loss 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    """A loss to backpropagate and its named parts for logging.

    loss: scalar tensor (float32) with its graph.
    parts: plain floats: "query_to_document", "document_to_query" (only when symmetric), "load_balance"
        (only when an aux loss was given) and "total".
    """

    loss: torch.Tensor
    parts: dict[str, float]


def negative_mask(query_positives: Sequence[set[str]], column_doc_ids: Sequence[str]) -> torch.Tensor:
    """Which document columns must not serve as negatives for which query.

    Args:
        query_positives: for each of the B queries, the ids of all its relevant documents (grade >= 1).
        column_doc_ids: the C document ids, one per column of the score matrix (in-batch positives first,
            then hard negatives).

    Returns:
        mask [B, C] bool on the CPU: True where column j's document is one of query i's positives. The
        column holding query i's own positive is True as well; `contrastive_loss` re-enables it as the
        target.
    """
    # Built as Python booleans and made a tensor once: setting a tensor's elements one by one took 0.2 ms
    # of every step, a few percent of a frozen-encoder step.
    rows = [[doc_id in positives for doc_id in column_doc_ids] for positives in query_positives]
    return torch.tensor(rows, dtype=torch.bool).reshape(len(query_positives), len(column_doc_ids))


def _masked_cross_entropy(logits: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy of each row with target = its row index, excluded entries set to -inf.

    logits [R, K] float32 with K >= R; exclude [R, K] bool or None. The diagonal is never excluded.
    """
    rows = logits.shape[0]
    targets = torch.arange(rows, device=logits.device)
    if exclude is not None:
        exclude = exclude.clone()
        exclude[targets, targets] = False  # the target stays, whatever the mask says
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, targets)


def _check_inputs(
    query_embeddings: torch.Tensor,
    doc_embeddings: torch.Tensor,
    mask: torch.Tensor | None,
    temperature: float,
    aux_loss: torch.Tensor | None,
) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if query_embeddings.dim() != 2:
        raise ValueError(f"query_embeddings: expected shape [B, H], got {tuple(query_embeddings.shape)}")
    if doc_embeddings.dim() != 2:
        raise ValueError(f"doc_embeddings: expected shape [C, H], got {tuple(doc_embeddings.shape)}")
    num_queries, hidden = query_embeddings.shape
    num_columns = doc_embeddings.shape[0]
    if num_queries == 0:
        raise ValueError("query_embeddings: expected at least one query, got an empty batch")
    if doc_embeddings.shape[1] != hidden:
        raise ValueError(
            f"doc_embeddings: expected hidden size {hidden} (as query_embeddings), "
            f"got shape {tuple(doc_embeddings.shape)}"
        )
    if num_columns < num_queries:
        raise ValueError(
            f"doc_embeddings: expected C >= B = {num_queries} rows (one positive per query first), "
            f"got {num_columns}"
        )
    if mask is not None:
        if tuple(mask.shape) != (num_queries, num_columns):
            raise ValueError(f"mask: expected shape {(num_queries, num_columns)}, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype}")
    if aux_loss is not None and aux_loss.numel() != 1:
        raise ValueError(f"aux_loss: expected a scalar, got shape {tuple(aux_loss.shape)}")


def contrastive_loss(
    query_embeddings: torch.Tensor,
    doc_embeddings: torch.Tensor,
    mask: torch.Tensor | None,
    temperature: float,
    symmetric: bool = False,
    aux_loss: torch.Tensor | None = None,
) -> LossOutput:
    """InfoNCE over in-batch positives and hard negatives, with false negatives masked out.

    Args:
        query_embeddings: [B, H].
        doc_embeddings: [C, H], C >= B; row i is query i's positive, rows B.. are hard negatives.
        mask: [B, C] bool from `negative_mask` (True = not a negative for that query), or None for no
            masking (the paper's behaviour).
        temperature: tau > 0; scores are divided by it.
        symmetric: also add the document->query direction over the first B columns and average the two.
        aux_loss: scalar, the model's already weighted load-balancing term; added to the total.

    Returns:
        LossOutput with the scalar loss and its parts as floats.
    """
    _check_inputs(query_embeddings, doc_embeddings, mask, temperature, aux_loss)
    num_queries = query_embeddings.shape[0]
    if mask is not None:
        mask = mask.to(query_embeddings.device)

    scores = query_embeddings.float() @ doc_embeddings.float().T / temperature  # [B, C]
    query_to_document = _masked_cross_entropy(scores, mask)
    parts = {"query_to_document": query_to_document.item()}
    loss = query_to_document

    if symmetric:
        # Row i: positive document i scored against all B queries; query j != i is excluded when
        # document i is also relevant to it (mask[j, i]).
        doc_scores = scores[:, :num_queries].T  # [B docs, B queries]
        doc_exclude = None if mask is None else mask[:, :num_queries].T
        document_to_query = _masked_cross_entropy(doc_scores, doc_exclude)
        parts["document_to_query"] = document_to_query.item()
        loss = (query_to_document + document_to_query) / 2

    if aux_loss is not None:
        aux_loss = aux_loss.reshape(())
        parts["load_balance"] = aux_loss.item()
        loss = loss + aux_loss.float()

    parts["total"] = loss.item()
    return LossOutput(loss=loss, parts=parts)
