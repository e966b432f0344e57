"""Pooling of token states into one vector per text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pool() needs only tensor methods: the command line reads POOLING_METHODS without torch
    import torch

POOLING_METHODS = ("mean", "cls")


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool token states [B, T, H] with the attention mask [B, T] into [B, H].

    `mean` averages the unmasked tokens (the paper's pooling and sentence-transformers' default);
    `cls` takes the first token.
    """
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # [B, T, 1]
        summed = (hidden_states * mask).sum(dim=1)  # [B, H]
        return summed / mask.sum(dim=1).clamp(min=1e-9)
    if method == "cls":
        return hidden_states[:, 0]
    raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {method!r}")
