"""`SBMoEModel`: base encoder + pooling (+ the MoE block), as one Hugging Face model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .config import SBMoEConfig
from .moe import SBMoEBlock, routing_keys
from .pooling import pool
from .settings import KINDS


@dataclass
class SBMoEOutput(ModelOutput):
    """The model's output for B texts.

    embeddings [B, H]: the vectors that are scored (dot product). pooled [B, H]: the encoder's pooled
    output. With the MoE block: router_logits [B, N], routing_weights [B, N], selected_experts [B, K],
    aux_loss (the load-balancing term times router_aux_loss_coef) and balance_loss (unweighted); these are
    None for texts the block does not take (documents of a query-side model, `SBMoEModel.uses_block`).
    """

    embeddings: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    router_logits: torch.Tensor | None = None
    routing_weights: torch.Tensor | None = None
    selected_experts: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None


class SBMoEModel(PreTrainedModel):
    """A bi-encoder: one shared encoder for queries and documents, pooled, then the head.

    The work is split in two so that the expensive part can be cached: `pool` runs the encoder
    (token ids -> pooled vector), `head` turns pooled vectors into the embeddings that are scored.

    With `apply_to` "queries" the block is query-side: documents skip it and keep what the encoder alone
    gives (pooled, normalised if the model normalises), so every call that embeds texts says their kind.
    """

    config_class = SBMoEConfig
    base_model_prefix = "sbmoe"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: SBMoEConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        if encoder is None:
            encoder = AutoModel.from_config(config.encoder)
        else:
            # Built around a pretrained encoder (its weights are not initialised twice): its config,
            # with its resolved attention implementation, is the one the model saves.
            config.encoder = encoder.config
        self.encoder = encoder
        self.moe = SBMoEBlock(config.hidden_size, config.block_settings()) if config.use_moe else None
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # The encoder initialises itself; the head's modules initialise in their constructors.
        pass

    def pool(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids [B, T] -> pooled encoder output [B, H] (not normalised)."""
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pool(hidden, attention_mask, self.config.pooling)

    def uses_block(self, kind: str | None = None) -> bool:
        """Whether texts of `kind` ("query" or "document"; None: not said) pass through the MoE block.

        Without a block: never. With apply_to "both": always, whatever the kind. With apply_to "queries":
        queries only, and the kind must be said (ValueError otherwise, rather than a guess)."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)} or None, got {kind!r}")
        if self.moe is None:
            return False
        if self.config.apply_to == "both":
            return True
        if kind is None:
            raise ValueError(
                "this model's MoE block applies to queries only (apply_to 'queries'): say whether the texts "
                "are queries or documents (kind='query' or kind='document')"
            )
        return kind == "query"

    def head(
        self,
        pooled: torch.Tensor,
        mode: str | None = None,
        keys: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        noise_weight: float = 1.0,
        kind: str | None = None,
    ) -> SBMoEOutput:
        """Pooled vectors [B, H] of texts of one kind -> the embeddings that are scored by dot product [B, H].

        mode: inference routing (top1, topk:K, all, random; default `config.default_mode`); ignored in
        training mode, where routing is noisy top-1 (or random for the RANDOM-GATE ablation).
        keys [B]: per-text routing keys (`routing_keys`), needed by the "random" mode.
        noise [B, N]: standard normal draws for training-time routing, one row per text.
        noise_weight: the factor of the routing noise at this step (`sbmoe.modeling.moe.noise_weight`).
        kind: "query" or "document" (None: not said, refused by a query-side model); texts the block does
        not take (`uses_block`) get the encoder's vectors, as a model without the block gives them.
        """
        if not self.uses_block(kind):
            embeddings = F.normalize(pooled, dim=-1) if self.config.normalize else pooled
            return SBMoEOutput(embeddings=embeddings, pooled=pooled)
        out, routing = self.moe(pooled, mode or self.config.default_mode, keys, noise, noise_weight)
        embeddings = F.normalize(out, dim=-1) if self.config.normalize else out
        return SBMoEOutput(
            embeddings=embeddings,
            pooled=pooled,
            router_logits=routing.router_logits,
            routing_weights=routing.routing_weights,
            selected_experts=routing.selected_experts,
            aux_loss=self.config.router_aux_loss_coef * routing.balance_loss,
            balance_loss=routing.balance_loss,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        mode: str | None = None,
        noise: torch.Tensor | None = None,
        kind: str | None = None,
    ) -> SBMoEOutput:
        """Token ids [B, T] -> embeddings [B, H] and routing. See `head` for the arguments."""
        pooled = self.pool(input_ids, attention_mask, token_type_ids)
        keys = routing_keys(input_ids, attention_mask) if self.uses_block(kind) else None
        return self.head(pooled, mode, keys, noise, kind=kind)


# Folders written by save_pretrained carry this code (model.py and the files it imports) and an auto_map,
# so that `AutoModel.from_pretrained(folder, trust_remote_code=True)` works where sbmoe is not installed.
SBMoEConfig.register_for_auto_class()
SBMoEModel.register_for_auto_class("AutoModel")
# `AutoModel.from_pretrained(folder)` returns an SBMoEModel for an SB-MoE folder once this module is imported.
AutoModel.register(SBMoEConfig, SBMoEModel)
