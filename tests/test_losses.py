"""Contrastive loss against hand-computed values: cross-entropy, masking of false negatives, symmetry."""

from __future__ import annotations

import math

import pytest
import torch

from sbmoe.training.losses import LossOutput, contrastive_loss, negative_mask

# The 2x2 toy batch used throughout: q0 = [1, 0], q1 = [0, 1]; d0 = [1, 0], d1 = [0.5, 0.5]; tau = 0.5.
# Q · D^T = [[1, 0.5], [0, 0.5]], so S = Q · D^T / 0.5 = [[2, 1], [0, 1]].
Q = [[1.0, 0.0], [0.0, 1.0]]
D = [[1.0, 0.0], [0.5, 0.5]]
TAU = 0.5


def tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], by hand; -inf entries drop out of the sum."""
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_ce_helper_matches_closed_form():
    # The helper itself: CE([2, 1], 0) = -2 + log(e^2 + e^1) = log(1 + e^-1).
    assert ce([2.0, 1.0], 0) == pytest.approx(math.log(1 + math.exp(-1)))


def test_query_to_document_toy_batch():
    # Row 0: S = [2, 1], target 0: -log(e^2 / (e^2 + e^1)) = log(1 + e^-1).
    # Row 1: S = [0, 1], target 1: -log(e^1 / (e^0 + e^1)) = log(1 + e^-1).
    # Mean over the 2 queries = log(1 + e^-1) ~= 0.31326.
    expected = math.log(1 + math.exp(-1))
    out = contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=TAU)
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.parts == pytest.approx({"query_to_document": expected, "total": expected}, rel=1e-6)
    assert set(out.parts) == {"query_to_document", "total"}
    assert all(type(value) is float for value in out.parts.values())


def test_query_to_document_temperature_one():
    # tau = 1: S = [[1, 0.5], [0, 0.5]].
    # Row 0: log(1 + e^(0.5 - 1)) = log(1 + e^-0.5); row 1: log(1 + e^(0 - 0.5)) = log(1 + e^-0.5).
    expected = math.log(1 + math.exp(-0.5))
    out = contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=1.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_toy_batch():
    # q->d as above: log(1 + e^-1).
    # d->q, column 0: S[:, 0] = [2, 0], target query 0: log(1 + e^(0 - 2)) = log(1 + e^-2).
    # d->q, column 1: S[:, 1] = [1, 1], target query 1: log(e^1 + e^1) - 1 = log 2.
    # d->q = (log(1 + e^-2) + log 2) / 2 ~= 0.40975; total = (q->d + d->q) / 2 ~= 0.36150.
    q_to_d = math.log(1 + math.exp(-1))
    d_to_q = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    out = contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=TAU, symmetric=True)
    assert out.parts["query_to_document"] == pytest.approx(q_to_d, rel=1e-6)
    assert out.parts["document_to_query"] == pytest.approx(d_to_q, rel=1e-6)
    assert out.loss.item() == pytest.approx((q_to_d + d_to_q) / 2, rel=1e-6)
    assert out.parts["total"] == pytest.approx((q_to_d + d_to_q) / 2, rel=1e-6)


# Duplicate positives: queries 0 and 1 share positive doc "a", query 2 has "b". Doc "a" is encoded in
# columns 0 and 1 (same embedding [1, 0]), doc "b" = [0, 1] in column 2. tau = 1.
# q0 = [1, 0], q1 = [0, 1], q2 = [1, 1]  =>  S = [[1, 1, 0], [0, 0, 1], [1, 1, 1]].
DUP_Q = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
DUP_D = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
DUP_POSITIVES = [{"a"}, {"a"}, {"b"}]
DUP_COLUMNS = ["a", "a", "b"]


def test_duplicate_positive_is_masked():
    mask = negative_mask(DUP_POSITIVES, DUP_COLUMNS)
    # Row 0: column 1 (doc "a" again) excluded: logits [1, -inf, 0], target 0: log(1 + e^-1).
    # Row 1: column 0 (doc "a") excluded: logits [-inf, 0, 1], target 1: -0 + log(e^0 + e^1) = log(1 + e).
    # Row 2: nothing excluded but its target: logits [1, 1, 1], target 2: log 3.
    masked = (math.log(1 + math.exp(-1)) + math.log(1 + math.e) + math.log(3)) / 3
    # Without the mask the duplicate acts as a negative:
    # Row 0: [1, 1, 0], target 0: -1 + log(2e + 1) = log(2 + e^-1).
    # Row 1: [0, 0, 1], target 1: log(2 + e).  Row 2: log 3.
    unmasked = (math.log(2 + math.exp(-1)) + math.log(2 + math.e) + math.log(3)) / 3
    got_masked = contrastive_loss(tensor(DUP_Q), tensor(DUP_D), mask=mask, temperature=1.0)
    got_unmasked = contrastive_loss(tensor(DUP_Q), tensor(DUP_D), mask=None, temperature=1.0)
    assert got_masked.loss.item() == pytest.approx(masked, rel=1e-6)
    assert got_unmasked.loss.item() == pytest.approx(unmasked, rel=1e-6)
    assert abs(masked - unmasked) > 0.1


def test_duplicate_positive_symmetric():
    mask = negative_mask(DUP_POSITIVES, DUP_COLUMNS)
    # d->q column 0: S[:, 0] = [1, 0, 1]; query 1 also has doc "a" (mask[1, 0]) -> [1, -inf, 1],
    #   target 0: -1 + log(2e) = log 2.
    # d->q column 1: S[:, 1] = [1, 0, 1]; query 0 excluded (mask[0, 1]) -> [-inf, 0, 1],
    #   target 1: log(1 + e).
    # d->q column 2: S[:, 2] = [0, 1, 1]; nothing excluded, target 2: -1 + log(1 + 2e) = log(2 + e^-1).
    q_to_d = (math.log(1 + math.exp(-1)) + math.log(1 + math.e) + math.log(3)) / 3
    d_to_q = (math.log(2) + math.log(1 + math.e) + math.log(2 + math.exp(-1))) / 3
    out = contrastive_loss(tensor(DUP_Q), tensor(DUP_D), mask=mask, temperature=1.0, symmetric=True)
    assert out.parts["query_to_document"] == pytest.approx(q_to_d, rel=1e-6)
    assert out.parts["document_to_query"] == pytest.approx(d_to_q, rel=1e-6)
    assert out.loss.item() == pytest.approx((q_to_d + d_to_q) / 2, rel=1e-6)


def test_relevant_hard_negative_masked_for_its_query_only():
    # Columns: p0 (query 0's positive), p1 (query 1's positive), h (hard negative, relevant to query 0).
    mask = negative_mask([{"p0", "h"}, {"p1"}], ["p0", "p1", "h"])
    assert mask.tolist() == [[True, False, True], [False, True, False]]
    # q = [[1, 0], [0, 1]], d = [[1, 0], [0, 1], [1, 1]], tau = 1  =>  S = [[1, 0, 1], [0, 1, 1]].
    # Row 0: h excluded -> [1, 0, -inf], target 0: log(1 + e^-1).
    # Row 1: h is a negative -> [0, 1, 1], target 1: -1 + log(1 + 2e) = log(2 + e^-1).
    # Unmasked row 0 would be [1, 0, 1] -> log(2 + e^-1) as well.
    q = tensor([[1.0, 0.0], [0.0, 1.0]])
    d = tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    masked = (math.log(1 + math.exp(-1)) + math.log(2 + math.exp(-1))) / 2
    unmasked = (math.log(2 + math.exp(-1)) + math.log(2 + math.exp(-1))) / 2
    assert contrastive_loss(q, d, mask=mask, temperature=1.0).loss.item() == pytest.approx(masked, rel=1e-6)
    assert contrastive_loss(q, d, mask=None, temperature=1.0).loss.item() == pytest.approx(unmasked, rel=1e-6)


def test_negative_mask_small_example():
    # q0 has positives a, c; q1 has b; q2 has a (duplicate of q0's). Columns: a, b, a, c (hard), x (hard).
    mask = negative_mask([{"a", "c"}, {"b"}, {"a"}], ["a", "b", "a", "c", "x"])
    assert mask.dtype == torch.bool
    assert mask.shape == (3, 5)
    assert mask.tolist() == [
        [True, False, True, True, False],
        [False, True, False, False, False],
        [True, False, True, False, False],
    ]


def test_all_false_mask_equals_no_mask():
    mask = torch.zeros(2, 2, dtype=torch.bool)
    with_mask = contrastive_loss(tensor(Q), tensor(D), mask=mask, temperature=TAU, symmetric=True)
    without = contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=TAU, symmetric=True)
    assert with_mask.loss.item() == pytest.approx(without.loss.item(), rel=1e-7)


def test_row_with_only_its_target_left_is_finite_and_zero():
    # Query 0 is relevant to both columns, so nothing is left but its target: loss 0 for that row.
    # Row 1 (toy S row [0, 1], target 1): log(1 + e^-1). Mean = log(1 + e^-1) / 2.
    mask = negative_mask([{"a", "b"}, {"b"}], ["a", "b"])
    q = tensor(Q).requires_grad_()
    d = tensor(D).requires_grad_()
    out = contrastive_loss(q, d, mask=mask, temperature=TAU, symmetric=True)
    assert math.isfinite(out.loss.item())
    assert out.parts["query_to_document"] == pytest.approx(math.log(1 + math.exp(-1)) / 2, rel=1e-6)
    out.loss.backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(d.grad).all()


def test_every_row_fully_masked_gives_zero():
    # Two copies of one document, positive for both queries: every row keeps only its target.
    mask = negative_mask([{"a"}, {"a"}], ["a", "a"])
    out = contrastive_loss(tensor(Q), tensor([[1.0, 0.0], [1.0, 0.0]]), mask=mask, temperature=TAU)
    assert out.loss.item() == 0.0


def test_aux_loss_is_added_and_reported():
    # total = log(1 + e^-1) + 0.25.
    aux = torch.tensor(0.25)
    out = contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=TAU, aux_loss=aux)
    expected = math.log(1 + math.exp(-1)) + 0.25
    assert out.parts["load_balance"] == pytest.approx(0.25)
    assert out.parts["query_to_document"] == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert out.parts["total"] == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_aux_loss_receives_gradient():
    aux = torch.tensor(0.1, requires_grad=True)
    out = contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=TAU, aux_loss=aux)
    out.loss.backward()
    assert aux.grad is not None and aux.grad.item() == pytest.approx(1.0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradients_flow_to_both_inputs(symmetric: bool):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, generator=generator, requires_grad=True)
    d = torch.randn(6, 8, generator=generator, requires_grad=True)
    mask = negative_mask([{"a"}, {"b", "e"}, {"a"}, {"d"}], ["a", "b", "a", "d", "e", "f"])
    out = contrastive_loss(q, d, mask=mask, temperature=0.05, symmetric=symmetric)
    out.loss.backward()
    assert q.grad is not None and d.grad is not None
    assert torch.isfinite(q.grad).all() and torch.isfinite(d.grad).all()
    assert q.grad.abs().sum() > 0 and d.grad.abs().sum() > 0


def test_low_precision_inputs_are_scored_in_float32():
    out = contrastive_loss(tensor(Q).bfloat16(), tensor(D).bfloat16(), mask=None, temperature=TAU)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature: float):
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=temperature)


def test_mismatched_hidden_size_raises():
    with pytest.raises(ValueError, match=r"doc_embeddings: expected hidden size 2.*got shape \(2, 3\)"):
        contrastive_loss(tensor(Q), torch.zeros(2, 3), mask=None, temperature=TAU)


def test_fewer_columns_than_queries_raises():
    with pytest.raises(ValueError, match=r"doc_embeddings: expected C >= B = 2.*got 1"):
        contrastive_loss(tensor(Q), torch.zeros(1, 2), mask=None, temperature=TAU)


def test_non_matrix_embeddings_raise():
    with pytest.raises(ValueError, match=r"query_embeddings: expected shape \[B, H\], got \(2,\)"):
        contrastive_loss(torch.zeros(2), tensor(D), mask=None, temperature=TAU)
    with pytest.raises(ValueError, match=r"doc_embeddings: expected shape \[C, H\]"):
        contrastive_loss(tensor(Q), torch.zeros(2, 2, 1), mask=None, temperature=TAU)


def test_empty_batch_raises():
    with pytest.raises(ValueError, match="query_embeddings"):
        contrastive_loss(torch.zeros(0, 2), tensor(D), mask=None, temperature=TAU)


def test_bad_mask_raises():
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 2\), got \(2, 3\)"):
        contrastive_loss(tensor(Q), tensor(D), mask=torch.zeros(2, 3, dtype=torch.bool), temperature=TAU)
    with pytest.raises(ValueError, match="mask: expected dtype torch.bool"):
        contrastive_loss(tensor(Q), tensor(D), mask=torch.zeros(2, 2), temperature=TAU)


def test_non_scalar_aux_loss_raises():
    with pytest.raises(ValueError, match="aux_loss"):
        contrastive_loss(tensor(Q), tensor(D), mask=None, temperature=TAU, aux_loss=torch.zeros(2))
