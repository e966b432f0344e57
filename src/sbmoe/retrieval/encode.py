"""Batched encoding of texts into pooled vectors, the model's head over them, and a disk cache.

Texts become `Pooled`: the encoder's pooled output [N, H] and each text's routing key [N] (a hash of its
token ids, which the RANDOM-GATE routes by). The two travel together, through the cache too, so
`apply_head` runs the head in any routing mode without its caller knowing which mode needs what; its caller
says the texts' kind, since a query-side block takes queries only.

The cache stores the pooled output (before the model's head), so a change of head settings or routing
mode reuses it. Its key covers the encoder weights, pooling, max length, the compute dtype (see
`sbmoe.modeling.precision`) and the exact texts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from sbmoe.io import atomic_open, staged_folder
from sbmoe.modeling.model import SBMoEModel, SBMoEOutput
from sbmoe.modeling.moe import routing_keys
from sbmoe.modeling.precision import dtype_name, encoder_autocast
from sbmoe.progress import progress_bar

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
CHUNK_SIZE = 4096  # texts tokenised and sorted by length at a time: bounds memory on any corpus


@dataclass(frozen=True)
class Pooled:
    """Pooled encoder outputs of N texts, and what the head needs besides them in every routing mode.

    vectors [N, H] float32: the encoder's pooled output (before the head).
    keys [N] int64: each text's routing key (`sbmoe.modeling.moe.routing_keys` of its token ids), which
    the "random" mode routes by. Every encoding path fills it; vectors made by hand may leave it None
    (then only the "random" mode is refused, by the block).
    """

    vectors: np.ndarray
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    def take(self, rows: Sequence[int] | np.ndarray) -> Pooled:
        """The texts at `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Pooled(self.vectors[rows], None if self.keys is None else self.keys[rows])


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def encode_pooled(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    kind: str,
    *,
    batch_size: int = 32,
    device: torch.device | None = None,
    progress: bool = True,
    chunk_size: int = CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> Pooled:
    """Encode `texts` ("query" or "document" limits apply): pooled vectors [N, H] float32 and routing keys.

    Texts go through in chunks of `chunk_size` (see `pool_chunk`); rows come back in the input order.
    dtype: the encoder's compute dtype (float32, or bfloat16 autocast).
    """
    vectors = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    keys = np.empty(len(texts), dtype=np.int64)
    with progress_bar(total=len(texts), desc=f"Encoding {kind}s", unit=kind[:3], progress=progress) as bar:
        for start in range(0, len(texts), chunk_size):
            chunk = pool_chunk(
                model, tokenizer, texts[start : start + chunk_size], kind,
                batch_size=batch_size, device=device, bar=bar, dtype=dtype,
            )  # fmt: skip
            vectors[start : start + len(chunk)], keys[start : start + len(chunk)] = chunk.vectors, chunk.keys
    return Pooled(vectors, keys)


def pool_chunk(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    kind: str,
    *,
    batch_size: int = 32,
    device: torch.device | None = None,
    bar: tqdm | None = None,
    dtype: torch.dtype = torch.float32,
) -> Pooled:
    """Pooled vectors [n, H] float32 and routing keys [n] of a chunk of texts, in input order.

    The chunk is tokenised once, then batched longest first so padding is small. A chunk's result
    depends only on its texts, which is what makes sharded encoding equal to one pass. The encoder runs
    in `dtype` (bfloat16 under autocast); the pooled vectors are float32 either way.
    """
    device = device or next(model.parameters()).device
    token_ids = tokenizer(
        list(texts),
        truncation=True,
        max_length=model.config.max_length_for(kind),
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
    pooled = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    keys = np.empty(len(texts), dtype=np.int64)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [token_ids[i] for i in rows]}, return_tensors="pt")
            input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with encoder_autocast(device, dtype):
                vectors = model.pool(input_ids, attention_mask)
            pooled[rows] = vectors.float().cpu().numpy()  # [b, H]
            keys[rows] = routing_keys(input_ids, attention_mask).cpu().numpy()
            if bar is not None:
                bar.update(len(rows))
    model.train(was_training)
    return Pooled(pooled, keys)


def embed_chunk(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    kind: str,
    mode: str | None = None,
    *,
    batch_size: int = 32,
    device: torch.device | None = None,
    bar: tqdm | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The scored embeddings [n, H] of a chunk of texts of `kind` under routing `mode`, and each text's top
    expert [n] (None when they skip the block, or without one): `pool_chunk`, then `apply_head`."""
    pooled = pool_chunk(
        model, tokenizer, texts, kind, batch_size=batch_size, device=device, bar=bar, dtype=dtype
    )
    return apply_head(model, pooled, mode, kind=kind)


def apply_head(
    model: SBMoEModel,
    pooled: Pooled,
    mode: str | None = None,
    batch_size: int = 8192,
    *,
    kind: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the model's head over pooled texts of one `kind` ("query" or "document"; None: not said, which a
    query-side model refuses) in batches, routing with `mode` (see `SBMoEModel.head`; None: the model's
    default).

    Returns the embeddings [N, H] float32 and, for texts that pass through an MoE block
    (`SBMoEModel.uses_block`), each text's top expert [N] (else None).
    """
    embeddings = np.empty(pooled.vectors.shape, dtype=np.float32)
    experts = np.empty(len(pooled), dtype=np.int64) if model.uses_block(kind) else None
    for rows, out in head_batches(model, pooled, mode, batch_size, kind=kind):
        embeddings[rows] = out.embeddings.float().cpu().numpy()
        if experts is not None:
            experts[rows] = out.selected_experts[:, 0].cpu().numpy()
    return embeddings, experts


def head_batches(
    model: SBMoEModel,
    pooled: Pooled,
    mode: str | None = None,
    batch_size: int = 8192,
    *,
    kind: str | None = None,
) -> Iterator[tuple[slice, SBMoEOutput]]:
    """`model.head` over pooled texts of one `kind`, `batch_size` rows at a time, in eval mode (restored
    afterwards) and without gradients: yields (rows, the head's output for those rows).

    Only the block is switched to eval mode and back: it is all `model.head` runs, and switching the
    encoder's hundred-odd modules too took milliseconds at each validation of a frozen-encoder run."""
    device = next(model.parameters()).device
    block = model.moe
    was_training = block is not None and block.training
    if block is not None:
        block.eval()
    try:
        for start in range(0, len(pooled), batch_size):
            rows = slice(start, start + batch_size)
            with torch.inference_mode():  # not held across the yield: the caller's code keeps its grad mode
                vectors = torch.from_numpy(np.ascontiguousarray(pooled.vectors[rows])).to(device)
                keys = None if pooled.keys is None else torch.from_numpy(pooled.keys[rows]).to(device)
                out = model.head(vectors, mode=mode, keys=keys, kind=kind)
            yield rows, out
    finally:
        if block is not None:
            block.train(was_training)


def text_routing_keys(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, batch_size: int = 1024
) -> np.ndarray:
    """Routing keys [N] of texts, exactly as `SBMoEModel.forward` derives them from its token ids."""
    keys = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        keys[start : start + batch_size] = routing_keys(batch["input_ids"], batch["attention_mask"]).numpy()
    return keys


def model_fingerprint(module: torch.nn.Module) -> str:
    """A digest of a module's parameter and buffer names, shapes, dtypes and values."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().data)
    return digest.hexdigest()


def texts_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for doc_id, text in zip(ids, texts, strict=True):
        digest.update(doc_id.encode())
        digest.update(b"\x00")
        digest.update(text.encode())
        digest.update(b"\x01")
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """$SBMOE_CACHE, else ~/.cache/sbmoe."""
    return Path(os.environ.get("SBMOE_CACHE") or Path.home() / ".cache" / "sbmoe")


class EmbeddingCache:
    """Pooled texts on disk: <root>/embeddings/<key>/{embeddings.npy, keys.npy, ids.json, meta.json}.

    Entries written before routing keys were cached have no keys.npy; `encode_cached` adds it.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def key(
        self,
        model: SBMoEModel,
        kind: str,
        ids: Sequence[str],
        texts: Sequence[str],
        dtype: torch.dtype = torch.float32,
    ) -> str:
        parts = {
            "format": CACHE_FORMAT,
            "encoder": model_fingerprint(model.encoder),
            "pooling": model.config.pooling,
            "max_length": model.config.max_length_for(kind),
            "texts": texts_fingerprint(ids, texts),
        }
        if dtype != torch.float32:  # float32 keys predate the field: existing caches stay valid
            parts["dtype"] = dtype_name(dtype)
        return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()

    def folder(self, key: str) -> Path:
        return self.root / "embeddings" / key

    def load(self, key: str, ids: Sequence[str]) -> Pooled | None:
        """The cached entry for `key` if present, complete and for exactly these ids (its keys None when
        the entry predates cached routing keys or they are unreadable); else None."""
        folder = self.folder(key)
        try:
            cached_ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
            array = np.load(folder / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError) as error:
            if folder.exists():
                logger.warning("ignoring unreadable embedding cache %s (%s)", folder, error)
            return None
        if cached_ids != list(ids) or array.shape[0] != len(ids):
            logger.warning("ignoring embedding cache %s: it holds other documents", folder)
            return None
        try:
            keys = np.load(folder / "keys.npy", allow_pickle=False)
        except (OSError, ValueError):
            keys = None
        if keys is not None and keys.shape != (len(ids),):
            keys = None
        return Pooled(array, keys)

    def save(self, key: str, ids: Sequence[str], pooled: Pooled, meta: dict) -> Path:
        """Write atomically: a temporary folder renamed into place (replacing an older entry), so a crash
        leaves no half entry."""
        with staged_folder(self.folder(key), replace=True) as staging:
            np.save(staging / "embeddings.npy", np.ascontiguousarray(pooled.vectors, dtype=np.float32))
            np.save(staging / "keys.npy", np.ascontiguousarray(pooled.keys, dtype=np.int64))
            (staging / "ids.json").write_text(json.dumps(list(ids)), encoding="utf-8")
            (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return self.folder(key)

    def add_keys(self, key: str, keys: np.ndarray) -> None:
        """Add routing keys to an entry written before they were cached (one atomic file write)."""
        with atomic_open(self.folder(key) / "keys.npy", "wb") as handle:
            np.save(handle, np.ascontiguousarray(keys, dtype=np.int64))


def encode_cached(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[str],
    texts: Sequence[str],
    kind: str = "document",
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    device: torch.device | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[Pooled, bool]:
    """`encode_pooled` of `texts` ("query" or "document"), from the cache when possible; the encoder runs
    in `dtype` (part of the cache key).

    Returns the pooled texts and whether they came from the cache.
    """
    key = cache.key(model, kind, ids, texts, dtype) if cache is not None else None
    if cache is not None:
        cached = cache.load(key, ids)
        if cached is not None:
            logger.info(
                "Reusing cached %s embeddings %s (%d x %d)", kind, cache.folder(key), *cached.vectors.shape
            )
            if cached.keys is None:  # an entry from before routing keys were cached: tokenising is enough
                cached = Pooled(
                    cached.vectors, text_routing_keys(tokenizer, texts, model.config.max_length_for(kind))
                )
                cache.add_keys(key, cached.keys)
            return cached, True
    pooled = encode_pooled(
        model, tokenizer, texts, kind, batch_size=batch_size, device=device, progress=progress, dtype=dtype
    )
    if cache is not None:
        meta = {
            "kind": kind,
            "count": len(ids),
            "hidden_size": pooled.vectors.shape[1],
            "dtype": dtype_name(dtype),
            "model": model.config.name_or_path,
        }
        folder = cache.save(key, ids, pooled, meta)
        logger.info("Cached %s embeddings in %s", kind, folder)
    return pooled, False
