"""`SBMoEConfig`: everything needed to rebuild a retriever, saved as config.json."""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from sbmoe.modeling.moe import ACTIVATIONS, VARIANTS, parse_mode
from sbmoe.modeling.pooling import POOLING_METHODS


class SBMoEConfig(PretrainedConfig):
    """Configuration of a bi-encoder retriever: a base encoder, its pooling and output settings.

    Args:
        encoder: the base encoder's config (a `PretrainedConfig` or its dict), e.g. a `BertConfig`.
        pooling: how token states become one vector: "mean" (the paper) or "cls".
        normalize: L2-normalise the final embedding (score = cosine). The paper does not.
        query_max_length: token limit for queries.
        document_max_length: token limit for documents.
        use_moe: add the SB-MoE block after pooling; False is the FINE-TUNED baseline.
        num_experts: N; 1 makes a single adapter of the same shape (the fair control).
        expert_hidden_size: experts' bottleneck width (default H/2).
        gate_hidden_size: the gate's hidden width (default H/2).
        expert_activation: the experts' activation: relu (paper), gelu, silu, tanh.
        variant: "faithful" (the authors' combination; the gate gets no gradient) or "learned"
            (each normalised expert output scaled by its gate value). See `sbmoe.modeling.moe`.
        random_gate: the RANDOM-GATE ablation: a random expert per text in training and inference.
        random_gate_seed: seed of the per-text expert choice of the "random" mode.
        router_aux_loss_coef: weight of the Switch load-balancing loss (0 = off, as the paper).
        default_mode: inference routing when none is asked for: top1, topk:K, all or random.
    """

    model_type = "sbmoe"
    sub_configs = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder: PretrainedConfig | dict[str, Any] | None = None,
        pooling: str = "mean",
        normalize: bool = False,
        query_max_length: int = 512,
        document_max_length: int = 512,
        use_moe: bool = False,
        num_experts: int = 6,
        expert_hidden_size: int | None = None,
        gate_hidden_size: int | None = None,
        expert_activation: str = "relu",
        variant: str = "faithful",
        random_gate: bool = False,
        random_gate_seed: int = 0,
        router_aux_loss_coef: float = 0.0,
        default_mode: str | None = None,
        **kwargs: Any,
    ):
        if isinstance(encoder, dict):
            encoder = AutoConfig.for_model(**encoder)
        elif encoder is not None:
            # PretrainedConfig.__init__ resets attention settings on sub-configs: never mutate the caller's.
            encoder = copy.deepcopy(encoder)
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.query_max_length = query_max_length
        self.document_max_length = document_max_length
        self.use_moe = use_moe
        self.num_experts = num_experts
        self.expert_hidden_size = expert_hidden_size
        self.gate_hidden_size = gate_hidden_size
        self.expert_activation = expert_activation
        self.variant = variant
        self.random_gate = random_gate
        self.random_gate_seed = random_gate_seed
        self.router_aux_loss_coef = router_aux_loss_coef
        self.default_mode = default_mode or ("random" if random_gate else "top1")
        super().__init__(**kwargs)
        self.validate_settings()

    def validate_settings(self) -> None:
        """Raise ValueError naming the offending field and what it accepts."""
        if self.pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {list(POOLING_METHODS)}, got {self.pooling!r}")
        for field in ("query_max_length", "document_max_length"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"num_experts must be an integer >= 1, got {self.num_experts!r}")
        for field in ("expert_hidden_size", "gate_hidden_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"{field} must be a positive integer or null (= hidden size / 2), got {value!r}"
                )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.expert_activation not in ACTIVATIONS:
            raise ValueError(
                f"expert_activation must be one of {list(ACTIVATIONS)}, got {self.expert_activation!r}"
            )
        if not self.router_aux_loss_coef >= 0:
            raise ValueError(f"router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef!r}")
        parse_mode(self.default_mode, self.num_experts)

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    def moe_block_kwargs(self) -> dict[str, Any]:
        """The arguments of `SBMoEBlock` this config describes (bottleneck and gate widths default to H/2)."""
        half = self.hidden_size // 2
        return {
            "hidden_size": self.hidden_size,
            "num_experts": self.num_experts,
            "expert_hidden_size": self.expert_hidden_size or half,
            "gate_hidden_size": self.gate_hidden_size or half,
            "activation": self.expert_activation,
            "variant": self.variant,
            "random_gate": self.random_gate,
            "random_gate_seed": self.random_gate_seed,
        }

    def max_length_for(self, kind: str) -> int:
        """Token limit for `kind` in {"query", "document"}."""
        if kind not in ("query", "document"):
            raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")
        return self.query_max_length if kind == "query" else self.document_max_length
