"""`SBMoEConfig`: everything needed to rebuild a retriever, saved as config.json."""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .pooling import POOLING_METHODS
from .settings import BLOCK_FIELDS, BlockSettings, block_settings_of


class SBMoEConfig(PretrainedConfig):
    """Configuration of a bi-encoder retriever: a base encoder, its pooling and output settings, and the
    MoE block's settings.

    Args:
        encoder: the base encoder's config (a `PretrainedConfig` or its dict), e.g. a `BertConfig`.
        pooling: how token states become one vector: "mean" (the paper) or "cls".
        normalize: L2-normalise the final embedding (score = cosine). The paper does not.
        query_max_length: token limit for queries.
        document_max_length: token limit for documents.
        use_moe: add the SB-MoE block after pooling; False is the FINE-TUNED baseline.
        upcycled_from: provenance: the single-expert model whose expert initialised every expert, if any.
        **kwargs: every field of `BlockSettings` (num_experts, variant, ...; see `sbmoe.modeling.settings`),
            saved flat in config.json; a field missing from an older config.json takes its default, which
            reproduces the block as it was before the field existed. Other keys go to `PretrainedConfig`.

    `default_mode` is stored resolved (top1, or random for RANDOM-GATE when not given).
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
        upcycled_from: str | None = None,
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
        self.upcycled_from = upcycled_from
        settings = BlockSettings(**{name: kwargs.pop(name) for name in BLOCK_FIELDS if name in kwargs})
        for name in BLOCK_FIELDS:
            setattr(self, name, getattr(settings, name))
        self.default_mode = settings.resolved_default_mode()
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
        self.block_settings()

    def block_settings(self) -> BlockSettings:
        """The block's settings (validated: ValueError naming a bad field)."""
        return block_settings_of(self)

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    def max_length_for(self, kind: str) -> int:
        """Token limit for `kind` in {"query", "document"}."""
        if kind not in ("query", "document"):
            raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")
        return self.query_max_length if kind == "query" else self.document_max_length


# `AutoConfig.from_pretrained(folder)` reads an SB-MoE config.json once this module is imported.
AutoConfig.register(SBMoEConfig.model_type, SBMoEConfig)
