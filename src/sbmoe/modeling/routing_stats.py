"""Expert usage of routing decisions: texts per top expert and routing entropy, defined once.

The training log (a batch's routing outputs, summed over processes), the evaluation's metrics.json (the
top-1 expert of every query and document) and the analysis (routing probabilities of a whole collection)
all compute them here.

E = number of experts. A block with a null expert (texts it passes through unchanged) reports those texts
as expert E: with `null_expert=True` counts get a last bin for it. Every text is counted once, by the
expert its routing chose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

Probabilities = TypeVar("Probabilities", np.ndarray, torch.Tensor)

_LOG_FLOOR = 1e-12  # p log p is taken as p log max(p, 1e-12): exactly 0 at p = 0, no NaN gradient


def expert_counts(
    experts: np.ndarray | torch.Tensor, num_experts: int, null_expert: bool = False
) -> list[int]:
    """How many texts have expert i as their top-1 choice, for i in 0..E-1 (and E, the null expert, when
    `null_expert`). experts: [N] ints in [0, E) (or [0, E]), an array or a tensor."""
    if isinstance(experts, torch.Tensor):
        experts = experts.detach().cpu().numpy()
    experts = np.asarray(experts, dtype=np.int64).reshape(-1)
    if num_experts < 1:
        raise ValueError(f"num_experts must be at least 1, got {num_experts}")
    bins = num_experts + int(null_expert)
    if experts.size and (experts.min() < 0 or experts.max() >= bins):
        raise ValueError(f"expert indices must lie in [0, {bins}), got {experts.min()}..{experts.max()}")
    return np.bincount(experts, minlength=bins).tolist()


def count_shares(counts: Sequence[int]) -> list[float]:
    """Each bin's share of sum(counts); all zeros when the sum is 0."""
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def entropy_terms(probabilities: Probabilities) -> Probabilities:
    """-p log p of every routing probability, in nats: [N, E] -> [N, E]; a row's sum is its text's routing
    entropy. Computed by the input's own library in its own precision (float32 tensors in training, float64
    arrays in the analysis), so each caller sums the terms as it needs: all of a batch, or per text."""
    if isinstance(probabilities, torch.Tensor):
        return -(probabilities * probabilities.clamp(min=_LOG_FLOOR).log())
    return -(probabilities * np.log(np.maximum(probabilities, _LOG_FLOOR)))


def routing_entropy(probabilities: np.ndarray) -> float:
    """Mean over texts of the routing entropy -sum_i p_i log p_i, in nats (0 log 0 = 0).

    probabilities: [N, E] routing distributions (rows sum to 1). 0 for one-hot rows, log E for uniform ones;
    0.0 when N = 0.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be [N, E], got shape {p.shape}")
    if p.shape[0] == 0:
        return 0.0
    return float(entropy_terms(p).sum(axis=1).mean())


def normalized_routing_entropy(probabilities: np.ndarray) -> float:
    """`routing_entropy` divided by log E: 0 = every text sure of one expert, 1 = every text uniform.

    probabilities: [N, E]. 0.0 when E = 1 (a single expert leaves no choice).
    """
    num_experts = np.asarray(probabilities).shape[-1]
    if num_experts < 2:
        return 0.0
    return routing_entropy(probabilities) / math.log(num_experts)
