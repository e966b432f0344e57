"""Statistics of routing decisions (counts of texts per expert)."""

from __future__ import annotations

from collections.abc import Sequence

ACTIVE_SHARE = 0.01  # the paper counts an expert as activated when it receives at least 1 % of texts


def active_experts(counts: Sequence[int], min_share: float = ACTIVE_SHARE) -> int:
    """How many experts receive at least `min_share` of the texts (the paper's "activated experts")."""
    total = sum(counts)
    return sum(1 for count in counts if total and count >= min_share * total)
