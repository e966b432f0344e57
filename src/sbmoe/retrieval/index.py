"""Index folders: a corpus encoded once by one model and routing mode, searchable without its qrels.

    INDEX/index.json        what the index holds: model, routing mode, type and settings, counts, provenance
    INDEX/embeddings.npy    [N, H] float32, the vectors that are scored (row i = line i of documents.jsonl)
    INDEX/documents.jsonl   {"_id", "title", "preview"} per row, for printing hits
    INDEX/experts.npy       [N] int32, each document's top expert (models whose MoE block takes documents)
    INDEX/ann.faiss         the approximate index (types hnsw and ivfpq)
    INDEX/shards/shard-IIIII-of-SSSSS/   while a sharded encoding is under way (see `encode_shard`)

A corpus is split into shards along chunks of `CHUNK_SIZE` documents, and every chunk is encoded the
same way whichever process encodes it, so S shards merged give exactly the embeddings of one pass.
Embeddings are written to memory-mapped files as they are produced: memory does not grow with the corpus
beyond the embedding matrix and the document ids.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sbmoe.data import document_text, iter_documents
from sbmoe.errors import DataError, SbmoeError
from sbmoe.io import provenance, staged_files, staged_folder, write_json
from sbmoe.modeling.loading import load_model
from sbmoe.modeling.model import SBMoEModel
from sbmoe.modeling.precision import dtype_name
from sbmoe.progress import progress_bar
from sbmoe.retrieval.ann import (
    ann_search,
    ann_settings,
    build_ann_index,
    load_ann_index,
    save_ann_index,
)
from sbmoe.retrieval.choices import INDEX_TYPES
from sbmoe.retrieval.encode import CHUNK_SIZE, embed_chunk, model_fingerprint
from sbmoe.retrieval.search import exact_search

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
SHARD_FILE = "shard.json"
SHARDS_DIR = "shards"
ANN_FILE = "ann.faiss"
PREVIEW_CHARS = 100
INDEX_FORMAT = 1
# Shards of one encoding must agree on all of these.
SHARED_FIELDS = (
    "num_shards", "num_documents", "corpus", "model_fingerprint", "mode", "chunk_size", "dim", "dtype",
    "apply_to",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ encode


def count_documents(corpus_path: str | Path) -> int:
    """Read the whole corpus once (checking every line) and count its documents."""
    count = sum(1 for _ in iter_documents(corpus_path))
    if count == 0:
        raise DataError(Path(corpus_path), "the corpus has no documents")
    return count


def shard_rows(num_documents: int, num_shards: int, shard_index: int, chunk_size: int = CHUNK_SIZE) -> range:
    """The corpus rows of shard `shard_index` of `num_shards`: whole chunks, as evenly as possible."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise SbmoeError(
            f"shard index must be in 0..{num_shards - 1} for {num_shards} shards, got {shard_index}"
        )
    chunks = math.ceil(num_documents / chunk_size)
    first, last = shard_index * chunks // num_shards, (shard_index + 1) * chunks // num_shards
    return range(min(first * chunk_size, num_documents), min(last * chunk_size, num_documents))


def shard_folder(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    return Path(output_dir) / SHARDS_DIR / f"shard-{shard_index:05d}-of-{num_shards:05d}"


def model_reference(name_or_path: str | Path) -> str:
    """How an index names its model: an absolute path for a folder, else the alias or hub id as given."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.is_dir() else str(name_or_path)


def encode_shard(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus_path: str | Path,
    output_dir: str | Path,
    *,
    model_name: str,
    num_shards: int = 1,
    shard_index: int = 0,
    mode: str | None = None,
    batch_size: int = 32,
    chunk_size: int = CHUNK_SIZE,
    device: torch.device | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Encode one shard of a corpus file into OUTPUT/shards/shard-I-of-S/ and return that folder.

    The shard is written into a temporary folder renamed into place when complete, so a crash leaves
    no partial shard; a complete shard of the same model and settings is kept, not encoded again.
    dtype: the encoder's compute dtype, recorded in the index: its queries are encoded the same way.
    """
    if mode is not None and model.moe is None:
        raise SbmoeError(f"--mode {mode}: this model has no MoE block, so it has no routing modes")
    mode = mode or (model.config.default_mode if model.moe is not None else None)
    if mode is not None:
        try:
            model.moe.check_mode(mode)
        except ValueError as error:
            raise SbmoeError(f"--mode {mode}: {error}") from error
    corpus_path = Path(corpus_path).resolve()
    num_documents = count_documents(corpus_path)
    rows = shard_rows(num_documents, num_shards, shard_index, chunk_size)
    info = {
        "format": INDEX_FORMAT,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "start": rows.start,
        "stop": rows.stop,
        "num_documents": num_documents,
        "corpus": str(corpus_path),
        "model": model_name,
        "model_fingerprint": model_fingerprint(model),
        "mode": mode,
        "num_experts": model.config.num_experts if model.moe is not None else None,
        "chunk_size": chunk_size,
        "dim": model.config.hidden_size,
        "dtype": dtype_name(dtype),
        # a query-side block: documents skip it, so the index holds the encoder's vectors and no experts
        **({"apply_to": "queries"} if model.moe is not None and not model.uses_block("document") else {}),
    }
    folder = shard_folder(output_dir, shard_index, num_shards)
    existing = _read_json(folder / SHARD_FILE) if (folder / SHARD_FILE).exists() else None
    if existing is not None:
        if existing == info:
            logger.info(
                "shard %d of %d is already encoded in %s; keeping it", shard_index, num_shards, folder
            )
            return folder
        raise SbmoeError(
            f"{folder} holds a shard of another encoding (model, mode or corpus); remove it first"
        )

    with staged_folder(folder) as staging:
        _encode_rows(
            model,
            tokenizer,
            corpus_path,
            rows,
            staging,
            mode,
            batch_size,
            chunk_size,
            device,
            progress,
            dtype,
        )
        write_json(staging / SHARD_FILE, info)
    logger.debug("shard %d of %d: %d documents in %s", shard_index, num_shards, len(rows), folder)
    return folder


def _encode_rows(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus_path: Path,
    rows: range,
    folder: Path,
    mode: str | None,
    batch_size: int,
    chunk_size: int,
    device: torch.device | None,
    progress: bool,
    dtype: torch.dtype,
) -> None:
    """Stream rows [start, stop) of the corpus through the model into memory-mapped files in `folder`."""
    dim = model.config.hidden_size
    embeddings = np.lib.format.open_memmap(folder / "embeddings.npy", "w+", np.float32, (len(rows), dim))
    experts = (
        np.lib.format.open_memmap(folder / "experts.npy", "w+", np.int32, (len(rows),))
        if model.uses_block("document")
        else None
    )
    documents = islice(iter_documents(corpus_path), rows.start, rows.stop)
    with (
        open(folder / "documents.jsonl", "w", encoding="utf-8") as listing,
        progress_bar(total=len(rows), desc="Encoding documents", unit="doc", progress=progress) as bar,
    ):
        written = 0
        for chunk in _batches(documents, chunk_size):
            texts = [document_text(title, text) for _, title, text in chunk]
            vectors, chosen = embed_chunk(
                model, tokenizer, texts, "document", mode,
                batch_size=batch_size, device=device, bar=bar, dtype=dtype,
            )  # fmt: skip
            embeddings[written : written + len(chunk)] = vectors
            if experts is not None:
                experts[written : written + len(chunk)] = chosen
            for doc_id, title, text in chunk:
                record = {"_id": doc_id, "title": title, "preview": text[:PREVIEW_CHARS]}
                listing.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += len(chunk)
    embeddings.flush()
    if experts is not None:
        experts.flush()
    del embeddings, experts


def _batches(items: Iterator, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# ------------------------------------------------------------------------------------------------- merge


def merge_shards(
    output_dir: str | Path,
    *,
    index_type: str = "exact",
    ann_overrides: dict[str, Any] | None = None,
    keep_shards: bool = False,
    progress: bool = True,
    adjust: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Join OUTPUT/shards/* into the index folder OUTPUT and return its index.json contents.

    Refuses (naming the shards) a missing shard, a shard present twice, shards of different encodings,
    and a document id found in two shards. The shards are removed afterwards unless `keep_shards`.
    adjust: called with the staged folder and its index.json contents once the embeddings are joined and
    before an approximate index is built over them; it may rewrite embeddings.npy (NUDGE) and returns what
    index.json should also record.
    """
    output_dir = Path(output_dir)
    if (output_dir / INDEX_FILE).exists():
        raise SbmoeError(f"{output_dir} already holds an index ({INDEX_FILE}); merge into a new folder")
    shards = _read_shards(output_dir)
    first = shards[0][1]
    num_documents, dim = first["num_documents"], first["dim"]
    ann = None  # checked before any work
    if index_type != "exact":
        ann = ann_settings(index_type, num_documents, dim, **(ann_overrides or {}))
    for folder, info in shards:
        _check_rows(folder, info)

    with staged_files(output_dir, last=INDEX_FILE) as staging:  # index.json last: it marks a complete index
        if len(shards) == 1 and not keep_shards:  # the one shard is the index: move, do not copy
            for item in shards[0][0].iterdir():
                if item.name != SHARD_FILE:
                    os.replace(item, staging / item.name)
        else:
            _copy_shards(shards, staging, progress)
        summary = _index_info(first, num_documents, len(shards))
        if adjust is not None:
            summary.update(adjust(staging, summary))
        if ann is not None:
            summary.update(_build_ann(staging, index_type, ann))
        write_json(staging / INDEX_FILE, summary)
    if not keep_shards:
        shutil.rmtree(output_dir / SHARDS_DIR, ignore_errors=True)
    return summary


def _copy_shards(shards: list[tuple[Path, dict[str, Any]]], staging: Path, progress: bool) -> None:
    """Concatenate the shards' files into `staging`, refusing a document id found in two shards."""
    first = shards[0][1]
    shape = (first["num_documents"], first["dim"])
    embeddings = np.lib.format.open_memmap(staging / "embeddings.npy", "w+", np.float32, shape)
    experts = None
    if first["num_experts"] is not None and first.get("apply_to") != "queries":
        experts = np.lib.format.open_memmap(staging / "experts.npy", "w+", np.int32, shape[:1])
    seen: dict[str, str] = {}
    with open(staging / "documents.jsonl", "w", encoding="utf-8") as listing:
        for folder, info in progress_bar(shards, desc="Merging shards", unit="shard", progress=progress):
            part = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
            for start in range(0, len(part), CHUNK_SIZE * 16):  # bounded copies
                block = part[start : start + CHUNK_SIZE * 16]
                embeddings[info["start"] + start : info["start"] + start + len(block)] = block
            del part
            if experts is not None:
                experts[info["start"] : info["stop"]] = np.load(folder / "experts.npy", allow_pickle=False)
            with open(folder / "documents.jsonl", encoding="utf-8") as handle:
                for line in handle:
                    doc_id = json.loads(line)["_id"]
                    if doc_id in seen:
                        raise SbmoeError(
                            f"document {doc_id!r} is in two shards: {seen[doc_id]} and {folder.name}"
                        )
                    seen[doc_id] = folder.name
                    listing.write(line)
    embeddings.flush()


def _read_shards(output_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every complete shard under OUTPUT/shards, checked to form exactly one encoding; in row order."""
    folders = sorted(p.parent for p in (output_dir / SHARDS_DIR).glob(f"*/{SHARD_FILE}"))
    if not folders:
        raise SbmoeError(
            f"no shards in {output_dir / SHARDS_DIR}; encode them first with "
            f"sbmoe encode ... --output {output_dir} --num-shards S --shard-index I"
        )
    shards = [(folder, _read_json(folder / SHARD_FILE)) for folder in folders]
    reference_folder, reference = shards[0]
    for folder, info in shards[1:]:
        for name in SHARED_FIELDS:
            if info.get(name) != reference.get(name):
                raise SbmoeError(
                    f"shards of different encodings: {folder} has {name} {info.get(name)!r}, "
                    f"{reference_folder} has {reference.get(name)!r}"
                )
    by_index: dict[int, list[Path]] = {}
    for folder, info in shards:
        by_index.setdefault(info["shard_index"], []).append(folder)
    num_shards = reference["num_shards"]
    doubled = {index: found for index, found in by_index.items() if len(found) > 1}
    if doubled:
        index, found = min(doubled.items())
        raise SbmoeError(
            f"shard {index} of {num_shards} is present {len(found)} times: {', '.join(map(str, found))}; "
            "keep one of them"
        )
    missing = sorted(set(range(num_shards)) - set(by_index))
    if missing:
        listed = ", ".join(str(index) for index in missing)
        raise SbmoeError(
            f"missing shard(s) {listed} of {num_shards} in {output_dir / SHARDS_DIR}; encode them with "
            f"sbmoe encode ... --output {output_dir} --num-shards {num_shards} --shard-index {missing[0]}"
        )
    return sorted(shards, key=lambda shard: shard[1]["shard_index"])


def _check_rows(folder: Path, info: dict[str, Any]) -> None:
    """A shard holds exactly its rows: in shard.json, embeddings.npy and documents.jsonl."""
    expected = shard_rows(info["num_documents"], info["num_shards"], info["shard_index"], info["chunk_size"])
    rows = len(np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False))
    with open(folder / "documents.jsonl", "rb") as handle:
        listed = sum(1 for _ in handle)
    claimed = range(info["start"], info["stop"])
    if claimed != expected or not rows == listed == len(expected):
        raise SbmoeError(
            f"{folder}: holds rows {info['start']}..{info['stop']} ({rows} embeddings, {listed} documents), "
            f"expected {expected.start}..{expected.stop}; encode this shard again"
        )


def _index_info(shard: dict[str, Any], num_documents: int, num_shards: int) -> dict[str, Any]:
    return {
        "format": INDEX_FORMAT,
        "type": "exact",
        "settings": {},
        "num_documents": num_documents,
        "dim": shard["dim"],
        "corpus": shard["corpus"],
        "model": shard["model"],
        "model_fingerprint": shard["model_fingerprint"],
        "mode": shard["mode"],
        "dtype": shard.get("dtype", "float32"),  # indexes built before the field: float32
        "num_experts": shard["num_experts"],
        **({"apply_to": shard["apply_to"]} if "apply_to" in shard else {}),
        "num_shards": num_shards,
        "provenance": provenance(),
    }


def _build_ann(folder: Path, index_type: str, settings: dict[str, Any]) -> dict[str, Any]:
    embeddings = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    tick = time.perf_counter()
    logger.info("building a %s index over %d vectors (%s)", index_type, len(embeddings), settings)
    index = build_ann_index(embeddings, index_type, settings)
    save_ann_index(index, folder / ANN_FILE)
    return {"type": index_type, "settings": settings, "build_seconds": round(time.perf_counter() - tick, 3)}


# ------------------------------------------------------------------------------------------------ search


@dataclass
class Index:
    """An index folder opened for search. Embeddings stay memory-mapped; documents are read once."""

    path: Path
    info: dict[str, Any]
    ids: list[str]
    titles: list[str]
    previews: list[str]
    embeddings: np.ndarray
    experts: np.ndarray | None
    ann: Any = None
    settings: dict[str, Any] = field(default_factory=dict)  # of the ANN index, search overrides applied

    @classmethod
    def open(cls, path: str | Path, search_overrides: dict[str, Any] | None = None) -> Index:
        """Open an index folder; `search_overrides` (ef_search, nprobe, refine) change an ANN search."""
        path = Path(path)
        if not (path / INDEX_FILE).is_file():
            hint = (
                " (its shards are not merged yet: sbmoe encode --merge)"
                if (path / SHARDS_DIR).is_dir()
                else ""
            )
            raise SbmoeError(
                f"{path}: no index here{hint}; build one with "
                f"sbmoe index --model M --corpus FILE --output {path}"
            )
        info = _read_json(path / INDEX_FILE)
        ids, titles, previews = [], [], []
        with open(path / "documents.jsonl", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                ids.append(record["_id"])
                titles.append(record["title"])
                previews.append(record["preview"])
        # Copy-on-write: a writable view (torch wants one) that is never written.
        embeddings = np.load(path / "embeddings.npy", mmap_mode="c", allow_pickle=False)
        experts_path = path / "experts.npy"
        experts = np.load(experts_path, allow_pickle=False) if experts_path.exists() else None
        if len(ids) != info["num_documents"] or embeddings.shape != (info["num_documents"], info["dim"]):
            raise SbmoeError(
                f"{path}: documents.jsonl or embeddings.npy does not match {INDEX_FILE}; rebuild the index"
            )
        index = cls(path, info, ids, titles, previews, embeddings, experts)
        overrides = {key: value for key, value in (search_overrides or {}).items() if value is not None}
        foreign = sorted(set(overrides) - set(info["settings"]))
        if foreign:
            flags = ", ".join("--" + key.replace("_", "-") for key in foreign)
            verb = "does" if len(foreign) == 1 else "do"
            raise SbmoeError(f"{path} is an {info['type']} index; {flags} {verb} not apply to it")
        if info["type"] != "exact":
            index.settings = {**info["settings"], **overrides}
            index.ann = load_ann_index(path / ANN_FILE, info["type"], index.settings)
        return index

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows for each query: scores [Q, k], rows [Q, k] (-1 where an ANN index found fewer)."""
        if self.ann is not None:
            refine = self.settings.get("refine", 0)
            return ann_search(self.ann, query_embeddings, k, embeddings=self.embeddings, refine=refine)
        return exact_search(query_embeddings, self.embeddings, k)

    def load_model(self, override: str | None = None) -> tuple[SBMoEModel, PreTrainedTokenizerBase]:
        """The model the index was built with (or `override`), checked to be that very model."""
        name = override or self.info["model"]
        model, tokenizer = load_model(name)
        if model_fingerprint(model) != self.info["model_fingerprint"]:
            raise SbmoeError(
                f"the model {name} is not the one {self.path} was built with (its weights differ); "
                "pass that model with --model, or build the index again"
            )
        return model, tokenizer

    def encode_queries(
        self,
        model: SBMoEModel,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        batch_size: int = 32,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Query embeddings [Q, H] under the index's routing mode and compute dtype, and each query's top
        expert [Q] or None."""
        mode = self.info["mode"]
        dtype = getattr(torch, self.info.get("dtype", "float32"))
        return embed_chunk(model, tokenizer, texts, "query", mode, batch_size=batch_size, dtype=dtype)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SbmoeError(f"{path}: cannot be read ({error})") from None


__all__ = [
    "INDEX_TYPES",
    "Index",
    "count_documents",
    "encode_shard",
    "merge_shards",
    "model_reference",
    "shard_rows",
]
