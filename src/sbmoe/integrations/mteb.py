"""An SB-MoE model as an MTEB (2.x) encoder: `mteb.evaluate(SbmoeMtebEncoder("runs/train/model"), tasks)`.

MTEB 2.x's encoder protocol (`mteb.models.EncoderProtocol`, checked structurally):

- `encode(inputs: DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset, prompt_type=None,
  batch_size=..., show_progress_bar=..., precision=...) -> np.ndarray`. Each batch is a dict of
  columns; "text" is always there. Retrieval tasks pass queries with `prompt_type=PromptType.query` and
  documents with `PromptType.document` (batches then also hold "id", "body" and, when the corpus has
  titles, "title"); other tasks pass None.
- `similarity` / `similarity_pairwise`: from `mteb.models.abs_encoder.AbsEncoder`, which scores with
  `mteb_model_meta.similarity_fn_name`.
- `mteb_model_meta`: a settable `ModelMeta` attribute, the identity mteb files results under (its name
  must read "organization/name"; see `SbmoeMtebEncoder._model_meta`).

What sbmoe decides: `prompt_type` query encodes with the model's query max length, anything else with the
document one (as the sentence-transformers export's plain `encode`); the routing mode is fixed per encoder;
a document is `sbmoe.data.document_text(title, body)` (MTEB's own joining is the same, `(title + " " +
text).strip()`); texts become embeddings through `SbmoeBeirModel.embed`, the one path every integration
shares, so the vectors equal `sbmoe evaluate`'s. When the batches carry ids (retrieval tasks do), the
pooled vectors go through sbmoe's embedding cache: a corpus `sbmoe evaluate` already encoded, with the
same ids in the same order, is read back instead of encoded again.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder  # mteb's base of its own model wrappers
from mteb.types import PromptType
from transformers import PreTrainedTokenizerBase

from sbmoe.data import document_text
from sbmoe.errors import SbmoeError
from sbmoe.integrations.beir import SbmoeBeirModel
from sbmoe.modeling.model import SBMoEModel
from sbmoe.modeling.precision import dtype_name
from sbmoe.modeling.settings import block_settings_dict
from sbmoe.retrieval.encode import EmbeddingCache, model_fingerprint

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import BatchedInput
    from torch.utils.data import DataLoader


class SbmoeMtebEncoder(AbsEncoder):
    """An sbmoe retriever behind MTEB's encoder protocol.

    Args:
        model_name: what `sbmoe.modeling.load_model` accepts (a folder, a Hub id, "minilm-l6").
        revision: the version mteb recorded for this model (`mteb_model_meta.revision`, a digest of the
            weights and encoder settings); None accepts any. A different one is an error, so results are
            never filed under a version the weights are not.
        device, mode, dtype, progress, loaded: as `SbmoeBeirModel` (the meta's loader reloads `model_name`
            from disk: settings changed on a `loaded` model in memory are not part of it).
        use_cache: reuse / fill sbmoe's embedding cache when the batches carry ids (as `sbmoe evaluate`).
        cache_dir: the cache's root (default $SBMOE_CACHE, else ~/.cache/sbmoe).
    """

    def __init__(
        self,
        model_name: str | Path,
        revision: str | None = None,
        *,
        device: str | torch.device | None = None,
        mode: str | None = None,
        dtype: str = "float32",
        use_cache: bool = True,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        loaded: tuple[SBMoEModel, PreTrainedTokenizerBase] | None = None,
    ):
        self.retriever = SbmoeBeirModel(
            model_name, mode=mode, device=device, dtype=dtype, progress=progress, loaded=loaded
        )
        self.model = self.retriever.model
        self.cache = EmbeddingCache(cache_dir) if use_cache else None
        self.mteb_model_meta = self._model_meta(str(model_name))
        if revision is not None and revision != self.mteb_model_meta.revision:
            raise SbmoeError(
                f"{model_name}: sbmoe names a model's version by the digest of its weights and encoder "
                f"settings, here {self.mteb_model_meta.revision}; revision {revision!r} is another version"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.retriever.name!r}, mode={self.retriever.mode!r})"

    def _model_meta(self, model_name: str) -> ModelMeta:
        """The `ModelMeta` mteb files results under.

        name: a Hub id as given, else "sbmoe/<folder name>"; revision: `model_revision` (so two
        checkpoints in folders of the same name never share results); experiment_kwargs: the routing mode
        (and a non-float32 dtype), so each mode's results are kept apart. similarity_fn_name: "dot", as
        sbmoe scores; "cosine" for a normalising model, where the two are equal. loader: rebuilds this
        encoder from where the model was found, so `mteb.evaluate(meta, tasks)` and `meta.load_model()`
        work too.
        """
        config = self.model.config
        experiment = {"mode": self.retriever.mode}
        if self.retriever.dtype != torch.float32:
            experiment["dtype"] = dtype_name(self.retriever.dtype)
        return ModelMeta(
            loader=partial(_load_encoder, _location(model_name)),
            name=_meta_name(model_name),
            revision=model_revision(self.model),
            release_date=None,
            languages=None,
            n_parameters=sum(parameter.numel() for parameter in self.model.parameters()),
            memory_usage_mb=None,
            max_tokens=max(config.query_max_length, config.document_max_length),
            embed_dim=config.hidden_size,
            license=None,
            open_weights=None,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch", "Transformers", "safetensors"],
            similarity_fn_name="cosine" if config.normalize else "dot",
            use_instructions=False,
            training_datasets=None,
            experiment_kwargs={key: value for key, value in experiment.items() if value is not None} or None,
        )

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        precision: str | None = None,
    ) -> np.ndarray:
        """Embeddings [N, H] float32 of every text the dataloader yields, in order.

        prompt_type: PromptType.query encodes queries; document or None, documents. batch_size and
        show_progress_bar are mteb's `encode_kwargs`; precision may only be float32 (sbmoe does not
        quantise embeddings).
        """
        if precision not in (None, "float32"):
            raise ValueError(f"precision {precision!r}: sbmoe embeddings are float32 only")
        kind = "query" if prompt_type == PromptType.query else "document"
        texts: list[str] = []
        ids: list[str] = []
        for batch in inputs:
            texts.extend(_batch_texts(batch, kind))
            ids.extend(batch.get("id", []))
        return self.retriever.embed(
            texts,
            kind,
            batch_size=batch_size,
            ids=ids if ids and len(ids) == len(texts) else None,  # the cache is keyed by ids and texts
            cache=self.cache,
            progress=show_progress_bar,
        )


def _batch_texts(batch: dict[str, Any], kind: str) -> list[str]:
    """The texts sbmoe encodes from one mteb batch: corpus batches (with "body") joined by
    `document_text`, anything else its "text" column."""
    if kind == "document" and "body" in batch:
        bodies = list(batch["body"])
        titles = list(batch["title"]) if "title" in batch else [""] * len(bodies)
        return [document_text(title, body) for title, body in zip(titles, bodies, strict=True)]
    return list(batch["text"])


def model_revision(model: SBMoEModel) -> str:
    """A digest of everything that makes the model's embeddings: its weights and buffers, pooling,
    normalisation, max lengths and block settings."""
    config = model.config
    settings = {
        "weights": model_fingerprint(model),
        "pooling": config.pooling,
        "normalize": config.normalize,
        "query_max_length": config.query_max_length,
        "document_max_length": config.document_max_length,
        "block": block_settings_dict(config.block_settings()) if model.moe is not None else None,
    }
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=10).hexdigest()


def _load_encoder(location: str, name: str, revision: str | None = None, **kwargs: Any) -> SbmoeMtebEncoder:
    """`ModelMeta.loader`: mteb passes the meta's name; the model is loaded from where it was found."""
    return SbmoeMtebEncoder(location, revision, **kwargs)


def _location(model_name: str) -> str:
    """An existing folder as an absolute path (it is loaded again from any working directory)."""
    path = Path(model_name).expanduser()
    return str(path.resolve()) if path.exists() else model_name


def _meta_name(model_name: str) -> str:
    """mteb wants "organization/name": a Hub id as it is, a folder or alias as "sbmoe/<its name>"."""
    path = Path(model_name).expanduser()
    if not path.exists() and model_name.count("/") == 1:
        return model_name
    return f"sbmoe/{path.resolve().name if path.exists() else model_name}"
