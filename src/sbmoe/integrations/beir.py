"""An SB-MoE model as a BEIR dense retriever, and the one path from texts to sbmoe's scored embeddings.

BEIR's exact search takes any object with `encode_queries` and `encode_corpus`::

    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch as DRES

    model = SbmoeBeirModel("runs/train/model")  # or "minilm-l6", a Hub id, ...
    retriever = EvaluateRetrieval(DRES(model, batch_size=64), score_function="dot")
    ndcg, _map, recall, precision = retriever.evaluate(qrels, retriever.retrieve(corpus, queries), [10])

sbmoe ranks by the dot product of the model's head output, so `score_function="dot"` reproduces
`sbmoe evaluate` (for a normalising model "cos_sim" ranks the same). Queries and documents get their own
max lengths, and the routing mode (default: the model's `default_mode`) is fixed for both sides.

`SbmoeBeirModel.embed` is the path every integration takes (the MTEB encoder delegates to it): the
library's pooled encoding (`encode_pooled`, or `encode_cached` when ids and a cache are given), then the
model's head (`apply_head`; the pooled texts carry the routing keys any mode needs). This module needs
nothing beyond sbmoe; beir itself is only needed to run the search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sbmoe.data import document_text
from sbmoe.errors import SbmoeError
from sbmoe.modeling.loading import load_model
from sbmoe.modeling.model import SBMoEModel
from sbmoe.modeling.precision import resolve_dtype
from sbmoe.retrieval.encode import (
    EmbeddingCache,
    apply_head,
    default_device,
    encode_cached,
    encode_pooled,
)

KINDS = ("query", "document")


class SbmoeBeirModel:
    """A retriever for BEIR's `DenseRetrievalExactSearch`: `encode_queries` and `encode_corpus`.

    Args:
        model: what `sbmoe.modeling.load_model` accepts (a folder, a Hub id, "minilm-l6").
        mode: the routing mode of both sides (top1, topk:K, all, random); None: the model's default_mode.
            A model without the MoE block has no modes (mode must be None).
        device: where the model runs; None: CUDA when available, else CPU.
        dtype: the encoder's compute dtype, as `sbmoe evaluate --dtype`: float32, bfloat16 or auto.
        progress: tqdm bars while encoding (a call's `show_progress_bar` overrides it).
        loaded: an already loaded (model, tokenizer) for `model`, to skip loading it again.

    Raises SbmoeError for a model that cannot be loaded or a mode it cannot route with.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        mode: str | None = None,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        progress: bool = True,
        loaded: tuple[SBMoEModel, PreTrainedTokenizerBase] | None = None,
    ):
        self.name = str(model)
        self.model, self.tokenizer = loaded or load_model(model)
        self.mode = inference_mode(self.model, mode)
        self.device = torch.device(device) if device is not None else default_device()
        self.model.to(self.device)
        self.model.eval()
        try:
            self.dtype = resolve_dtype(dtype, self.device)
        except ValueError as error:
            raise SbmoeError(str(error)) from error
        self.progress = progress

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, mode={self.mode!r}, device={str(self.device)!r})"

    def embed(
        self,
        texts: Sequence[str],
        kind: str,
        *,
        batch_size: int = 32,
        ids: Sequence[str] | None = None,
        cache: EmbeddingCache | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """The embeddings sbmoe scores [N, H] float32 of `texts` as `kind` ("query" or "document"), in order.

        Documents must already be joined the sbmoe way (`sbmoe.data.document_text`). With `ids` (one per
        text) and a `cache`, the pooled vectors come from / go to sbmoe's embedding cache, so a corpus that
        `sbmoe evaluate` encoded (same ids, texts, order and encoder) is not encoded again.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        progress = self.progress if progress is None else progress
        options = {"batch_size": batch_size, "device": self.device, "progress": progress, "dtype": self.dtype}
        if ids is not None and cache is not None:
            pooled, _ = encode_cached(self.model, self.tokenizer, ids, texts, kind, cache=cache, **options)
        else:
            pooled = encode_pooled(self.model, self.tokenizer, texts, kind, **options)
        embeddings, _ = apply_head(self.model, pooled, self.mode, kind=kind)
        return embeddings

    def encode_queries(
        self,
        queries: Sequence[str],
        batch_size: int = 32,
        *,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Query embeddings [N, H]: a float32 numpy array, or a CPU tensor with `convert_to_tensor`.

        The keyword arguments are those BEIR's searches pass (sentence-transformers' names);
        `normalize_embeddings` L2-normalises (BEIR's faiss search asks for it with cosine scoring).
        """
        embeddings = self.embed(queries, "query", batch_size=batch_size, progress=show_progress_bar)
        return _as_requested(embeddings, convert_to_tensor, normalize_embeddings)

    def encode_corpus(
        self,
        corpus: Sequence[Mapping[str, str]] | Mapping[str, Sequence[str]] | Sequence[str],
        batch_size: int = 32,
        *,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Document embeddings [N, H], in corpus order; arguments as in `encode_queries`.

        corpus: what BEIR passes: a list of {"title", "text"} dicts (title optional), a dict of lists
        {"title": [...], "text": [...]}, or a list of already joined texts.
        """
        texts = corpus_texts(corpus)
        embeddings = self.embed(texts, "document", batch_size=batch_size, progress=show_progress_bar)
        return _as_requested(embeddings, convert_to_tensor, normalize_embeddings)


def inference_mode(model: SBMoEModel, mode: str | None) -> str | None:
    """The routing mode `model` encodes with: `mode`, or its default_mode; None without an MoE block.

    Raises SbmoeError naming the mode and what the model accepts.
    """
    if model.moe is None:
        if mode is not None:
            raise SbmoeError(f"mode {mode!r}: this model has no MoE block, so it has no routing modes")
        return None
    mode = mode or model.config.default_mode
    try:
        model.moe.check_mode(mode)
    except ValueError as error:
        raise SbmoeError(str(error)) from error
    return mode


def corpus_texts(
    corpus: Sequence[Mapping[str, str]] | Mapping[str, Sequence[str]] | Sequence[str],
) -> list[str]:
    """The text sbmoe encodes for each document of a BEIR corpus chunk: `document_text(title, text)`."""
    if isinstance(corpus, Mapping):  # a dict of lists
        texts = corpus["text"]
        titles = corpus.get("title") or [""] * len(texts)
        return [document_text(title or "", text) for title, text in zip(titles, texts, strict=True)]
    return [
        doc if isinstance(doc, str) else document_text(doc.get("title") or "", doc["text"]) for doc in corpus
    ]


def _as_requested(
    embeddings: np.ndarray, convert_to_tensor: bool, normalize: bool
) -> np.ndarray | torch.Tensor:
    if normalize:
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.maximum(norms, 1e-12)  # as torch.nn.functional.normalize
    return torch.from_numpy(embeddings) if convert_to_tensor else embeddings
