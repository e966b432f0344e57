"""Export an SB-MoE model as a sentence-transformers folder.

The folder is sentence-transformers' own layout: Transformer (the encoder and tokenizer at the root),
Pooling, then `SBMoEHead` (the block, in 2_SBMoEHead/ with config.json and model.safetensors), then
Normalize when the model normalises (with a Router of query and document routes when the two sides differ:
in max length, or in the block, which a query-side model applies to queries only). Only the head is sbmoe
code, so loading it needs sbmoe installed and `SentenceTransformer(folder, trust_remote_code=True)`; a model
without the MoE block exports as a plain folder that needs neither.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from sbmoe.errors import SbmoeError
from sbmoe.io import check_new_folder, staged_folder
from sbmoe.modeling.model import SBMoEModel
from sbmoe.modeling.moe import SBMoEBlock, routing_keys
from sbmoe.modeling.settings import KINDS, BlockSettings, block_settings_dict

logger = logging.getLogger(__name__)

try:  # sentence-transformers >= 6
    from sentence_transformers.base.modules.module import Module
except ImportError:  # sentence-transformers 5
    from sentence_transformers.models import Module


class SBMoEHead(Module):
    """The SB-MoE block over `features["sentence_embedding"]`, routing with a fixed inference mode.

    Adds `features["selected_experts"]` [B, K]. The block gets each text's routing key from its token ids,
    exactly as `SBMoEModel.forward` passes it.
    """

    config_keys = ["block_settings", "mode"]

    def __init__(self, block_settings: dict[str, Any], mode: str = "top1"):
        """block_settings: {"hidden_size": H, **the `BlockSettings` fields} (folders exported before
        `BlockSettings` existed name the activation "activation"; they load too)."""
        super().__init__()
        settings = dict(block_settings)
        hidden_size = settings.pop("hidden_size")
        if "activation" in settings:
            settings["expert_activation"] = settings.pop("activation")
        self.block = SBMoEBlock(hidden_size, BlockSettings(**settings))
        self.block.check_mode(mode)
        self.block_settings = {"hidden_size": hidden_size, **block_settings_dict(self.block.settings)}
        self.mode = mode

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        keys = routing_keys(features["input_ids"], features["attention_mask"])  # what "random" routes by
        out, routing = self.block(features["sentence_embedding"], self.mode, keys)
        features["sentence_embedding"] = out
        features["selected_experts"] = routing.selected_experts
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> SBMoEHead:
        hub_kwargs = {
            key: kwargs[key]
            for key in ("token", "cache_folder", "revision", "local_files_only")
            if key in kwargs
        }
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub_kwargs)
        head = cls(**{key: config[key] for key in cls.config_keys if key in config})
        return cls.load_torch_weights(model_name_or_path, subfolder=subfolder, model=head, **hub_kwargs)

    @classmethod
    def from_model(cls, model: SBMoEModel, mode: str | None = None) -> SBMoEHead:
        settings = {
            "hidden_size": model.config.hidden_size,
            **block_settings_dict(model.config.block_settings()),
        }
        head = cls(settings, mode or model.config.default_mode)
        head.block.load_state_dict(model.moe.state_dict())
        return head


def export_sentence_transformers(
    model: SBMoEModel, tokenizer: Any, output: str | Path, mode: str | None = None
) -> Path:
    """Write `model` as a sentence-transformers folder at `output` (which must not exist or be empty).

    mode: the routing the exported model uses (default: the model's default_mode). The folder declares the
    similarity sbmoe scores with (dot product; "cosine" when the model normalises), and a model whose query
    and document max lengths differ gets a Router with one route per side, for `encode_query` and
    `encode_document` (plain `encode` takes the document route). So does a query-side model (apply_to
    "queries"): its block is in the query route only, and documents get the encoder's pooled vectors.
    """
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Router, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Router, Transformer

    output = check_new_folder(output)
    if model.moe is None and mode is not None:
        raise SbmoeError("--mode: this model has no MoE block, so it has no routing modes")
    if model.moe is not None:
        try:
            model.moe.check_mode(mode or model.config.default_mode)
        except ValueError as error:
            raise SbmoeError(str(error)) from error
    config = model.config
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sbmoe-encoder.", dir=output.parent) as encoder_dir:
        model.encoder.save_pretrained(encoder_dir)
        tokenizer.save_pretrained(encoder_dir)

        def encoder(kind: str) -> torch.nn.Module:
            return Transformer(encoder_dir, max_seq_length=config.max_length_for(kind))

        def pooling() -> torch.nn.Module:
            return Pooling(config.hidden_size, pooling_mode=config.pooling)

        modules: list[torch.nn.Module]
        if model.moe is not None and not model.uses_block("document"):
            # A query-side block: only the query route has it; documents get the encoder's pooled vectors.
            routes = {kind: [encoder(kind), pooling()] for kind in KINDS}
            routes["query"].append(SBMoEHead.from_model(model, mode))
            modules = [Router.for_query_document(routes["query"], routes["document"])]
        else:
            if config.query_max_length == config.document_max_length:
                modules = [encoder("document")]
            else:  # a route per side, each with its own max length (the encoder is stored once per route)
                modules = [Router.for_query_document([encoder("query")], [encoder("document")])]
            modules.append(pooling())
            if model.moe is not None:
                modules.append(SBMoEHead.from_model(model, mode))
        if config.normalize:
            modules.append(Normalize())
        # sbmoe scores by dot product; with normalised embeddings that is the cosine
        similarity = "cosine" if config.normalize else "dot"
        st_model = SentenceTransformer(modules=modules, device="cpu", similarity_fn_name=similarity)
        with staged_folder(output) as staging:
            st_model.save(str(staging))
            if model.moe is not None:
                _card_loads_with_remote_code(staging / "README.md")
    return output


def _card_loads_with_remote_code(card: Path) -> None:
    """The model card's usage snippet with `trust_remote_code=True`: the SB-MoE head is a custom module."""
    if card.is_file():
        text = re.sub(
            r'SentenceTransformer\("([^"]*)"\)', r'SentenceTransformer("\1", trust_remote_code=True)',
            card.read_text(encoding="utf-8"),
        )  # fmt: skip
        card.write_text(text, encoding="utf-8")
