"""Analyse an SB-MoE model's routing on one collection split: which expert each text goes to.

Writes to the output folder:
    routing.json        the routing summary (shares, activated experts, entropy, shared-expert rate),
                        each text's top-1 expert {"queries": {id: expert}, "documents": {id: expert}},
                        the settings, the model's config and provenance
    expert_shares.png   share of queries and of documents per expert
    document_map.png    2-D projection (PCA or t-SNE) of the documents' pooled vectors, by expert
                        (the figures are .pdf or .svg files with figure_format pdf or svg)

Each text is routed once, on its pooled vector (the input the block actually routes), and counted once.
Corpus and query encodings go through the embedding cache, so a prior `sbmoe evaluate` is reused.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sbmoe.analysis.formats import FIGURE_FORMATS
from sbmoe.errors import SbmoeError
from sbmoe.modeling.fields import setting
from sbmoe.modeling.precision import DTYPE_HELP, DTYPES

logger = logging.getLogger(__name__)

PROJECTION_CHOICES = ("pca", "tsne")


@dataclass
class AnalyzeSettings:
    """What `sbmoe analyze` does."""

    model: str = setting(help="SB-MoE model folder")
    dataset: str = setting(help="collection name (under --data-dir) or folder")
    split: str = setting("test", "qrels split whose judged queries are routed")
    data_dir: str | None = setting(None, "folder of BEIR collections", null="$SBMOE_DATA")
    output_dir: str | None = setting(None, "where results go", null="runs/analyze/DATASET-SPLIT-MODEL")
    projection: str = setting("pca", "document map: pca or tsne (slower)", PROJECTION_CHOICES)
    max_points: int = setting(2000, "documents drawn on the map (and given to t-SNE)")
    batch_size: int = setting(32, "texts per forward pass")
    progress: bool = setting(True, "progress bars")
    dtype: str = setting("float32", DTYPE_HELP, DTYPES)  # bfloat16: autocast; see precision.py
    figure_format: str = setting("png", "file format of the two figures", FIGURE_FORMATS)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for field in ("model", "dataset", "split"):
            if not str(getattr(self, field)).strip():
                raise ValueError(f"{field} must not be empty")
        if self.projection not in PROJECTION_CHOICES:
            raise ValueError(f"projection must be one of {list(PROJECTION_CHOICES)}, got {self.projection!r}")
        if self.max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {self.max_points}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.figure_format not in FIGURE_FORMATS:
            raise ValueError(
                f"figure_format must be one of {list(FIGURE_FORMATS)}, got {self.figure_format!r}"
            )

    def resolved_output_dir(self, dataset_name: str) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        model_tag = Path(self.model.rstrip("/")).name or "model"
        return Path("runs") / "analyze" / f"{dataset_name}-{self.split}-{model_tag}"


def analyze(settings: AnalyzeSettings) -> dict[str, Any]:
    """Route the corpus and the split's judged queries, write the artifacts, return the summary.

    The returned dict is routing.json without the per-text experts, plus "output_dir" and "outputs"
    (paths of routing.json, expert_shares.png, document_map.png; the figures .pdf or .svg after
    `settings.figure_format`). Raises SbmoeError for a model without an MoE block.
    """
    import numpy as np
    import torch

    from sbmoe.analysis.plots import plot_embedding_map, plot_expert_shares
    from sbmoe.analysis.routing import router_probabilities, routing_summary
    from sbmoe.data import load_dataset
    from sbmoe.io import provenance, write_json
    from sbmoe.modeling.loading import load_model
    from sbmoe.modeling.moe import random_experts
    from sbmoe.modeling.precision import resolve_dtype
    from sbmoe.retrieval.encode import (
        EmbeddingCache,
        apply_head,
        default_device,
        encode_cached,
        text_routing_keys,
    )

    dataset = load_dataset(settings.dataset, settings.data_dir)
    qrels = dataset.qrels(settings.split)
    corpus, queries = dataset.corpus, dataset.queries  # read (and validated) before the model loads
    output_dir = settings.resolved_output_dir(dataset.name)

    model, tokenizer = load_model(settings.model)
    if model.moe is None:
        raise SbmoeError(f"{settings.model}: model has no MoE block: nothing to analyse")
    num_experts = model.config.num_experts
    device = default_device()
    model.to(device)

    # Texts exactly as `evaluate` encodes them, so that its cached pooled vectors are found.
    cache = EmbeddingCache()
    document_texts = corpus.document_texts()
    query_ids = [query_id for query_id in qrels if query_id in queries]
    query_texts = [queries[query_id] for query_id in query_ids]
    encode = {
        "cache": cache,
        "batch_size": settings.batch_size,
        "device": device,
        "progress": settings.progress,
        "dtype": resolve_dtype(settings.dtype, device),
    }
    pooled_docs, docs_from_cache = encode_cached(
        model, tokenizer, corpus.ids, document_texts, "document", **encode
    )  # [Nd, H]
    pooled_queries, _ = encode_cached(model, tokenizer, query_ids, query_texts, "query", **encode)  # [Nq, H]

    doc_probs = router_probabilities(model, pooled_docs)  # [Nd, E]
    query_probs = router_probabilities(model, pooled_queries)  # [Nq, E]
    mode = model.config.default_mode
    if mode == "random":  # RANDOM-GATE: the expert used is a hash of the text's tokens, not the gate's choice
        expert_source = "random gate (hash of each text's tokens)"

        def chosen(texts: list[str], kind: str) -> np.ndarray:
            keys = text_routing_keys(tokenizer, texts, model.config.max_length_for(kind))
            seed = model.config.random_gate_seed
            return random_experts(torch.from_numpy(keys), num_experts, seed).numpy()

        doc_experts = chosen(document_texts, "document")
        query_experts = chosen(query_texts, "query")
    else:  # the block's own top-1 choice: the gate's argmax, the nearest prototype, or the null expert
        expert_source = "router's top-1 choice (eval mode, no noise)"
        doc_experts, query_experts = (
            apply_head(model, pooled_docs, mode)[1],
            apply_head(model, pooled_queries, mode)[1],
        )

    summary = routing_summary(
        query_probs,
        doc_probs,
        query_ids,
        corpus.ids,
        qrels,
        query_experts=query_experts,
        doc_experts=doc_experts,
        null_expert=model.moe.has_null_expert,
    )
    header = {
        "dataset": dataset.name,
        "split": settings.split,
        "model": settings.model,
        "variant": model.config.variant,
        "default_mode": mode,
        "expert_source": expert_source,
        "corpus_from_cache": docs_from_cache,
        **summary,
    }

    model_tag = Path(settings.model.rstrip("/")).name or "model"
    title = f"{dataset.name} ({settings.split}), {model_tag}: {num_experts} experts"
    outputs = {
        "routing": output_dir / "routing.json",
        "expert_shares": output_dir / f"expert_shares.{settings.figure_format}",
        "document_map": output_dir / f"document_map.{settings.figure_format}",
    }
    write_json(
        outputs["routing"],
        {
            **header,
            "experts": {
                "queries": dict(zip(query_ids, query_experts.tolist(), strict=True)),
                "documents": dict(zip(corpus.ids, doc_experts.tolist(), strict=True)),
            },
            "settings": asdict(settings),
            "model_config": model.config.to_dict(),
            "dataset_path": str(dataset.path),
            "provenance": provenance(),
        },
    )
    plot_expert_shares(
        summary["queries"]["shares"],
        summary["documents"]["shares"],
        outputs["expert_shares"],
        f"Top-1 expert per text\n{title}",
        null_expert=summary["null_expert"],
    )
    if len(pooled_docs) >= 2:
        plot_embedding_map(
            pooled_docs,
            doc_experts,
            outputs["document_map"],
            f"Documents' pooled vectors by top-1 expert\n{title}",
            method=settings.projection,
            max_points=settings.max_points,
            num_experts=model.moe.num_choices,
        )
    else:
        logger.warning("fewer than 2 documents: no document map")
        del outputs["document_map"]
    logger.info("Routing analysis written to %s", output_dir)
    return {**header, "output_dir": str(output_dir), "outputs": {k: str(v) for k, v in outputs.items()}}


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for a person: shares per expert, activated experts, entropy, shared-expert rate."""
    num_experts = summary["num_experts"]
    lines = [
        f"{summary['dataset']} ({summary['split']}), {summary['model']}: {num_experts} experts, "
        f"routing by {summary['expert_source']}"
    ]
    for side in ("queries", "documents"):
        part = summary[side]
        shares = " ".join(f"{100 * share:5.1f}" for share in part["shares"])
        lines.append(
            f"  {side:<9} n={part['count']:<7} shares % [{shares}]  activated {part['active_experts']} of "
            f"{num_experts}; entropy {part['entropy']:.3f} nats ({part['normalized_entropy']:.2f} of max)"
        )
    shared = summary["shared_expert"]
    rate = "n/a" if shared["same_expert"] is None else f"{100 * shared['same_expert']:.1f} %"
    lines.append(
        f"  query and relevant document on the same expert: {rate} of {shared['pairs']} pairs "
        f"(chance {100 * shared['chance']:.1f} %)"
    )
    lines.append("  wrote " + ", ".join(summary["outputs"].values()))
    return "\n".join(lines)
