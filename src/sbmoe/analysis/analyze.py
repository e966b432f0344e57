"""Analyse an SB-MoE model's routing on one collection split: which expert each text goes to.

Writes to the output folder:
    routing.json        the routing summary (shares, activated experts, entropy, shared-expert rate),
                        each text's top-1 expert {"queries": {id: expert}, "documents": {id: expert}},
                        the settings, the model's config and provenance
    expert_shares.png   share of queries and of documents per expert
    document_map.png    2-D projection (PCA or t-SNE) of the documents' pooled vectors, by expert
                        (the figures are .pdf or .svg files with figure_format pdf or svg)

Each text is routed once, on its pooled vector (the input the block actually routes), and counted once. The
documents of a query-side block (apply_to "queries") skip it in retrieval: their experts here are those the
block would give them.
Corpus and query encodings go through the embedding cache, so a prior `sbmoe evaluate` is reused.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sbmoe.analysis.formats import FIGURE_FORMATS
from sbmoe.errors import SbmoeError
from sbmoe.evaluation.settings import SplitSettings
from sbmoe.modeling.fields import setting

logger = logging.getLogger(__name__)

PROJECTION_CHOICES = ("pca", "tsne")


@dataclass
class AnalyzeSettings(SplitSettings):
    """What `sbmoe analyze` does."""

    command = "analyze"

    model: str = setting(help="SB-MoE model folder")
    split: str = setting("test", "qrels split whose judged queries are routed")
    output_dir: str | None = setting(None, "where results go", null="runs/analyze/DATASET-SPLIT-MODEL")
    projection: str = setting("pca", "document map: pca or tsne (slower)", PROJECTION_CHOICES)
    max_points: int = setting(2000, "documents drawn on the map (and given to t-SNE)")
    figure_format: str = setting("png", "file format of the two figures", FIGURE_FORMATS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {self.max_points}")


def analyze(settings: AnalyzeSettings) -> dict[str, Any]:
    """Route the corpus and the split's judged queries, write the artifacts, return the summary.

    The returned dict is routing.json without the per-text experts, plus "output_dir" and "outputs"
    (paths of routing.json, expert_shares.png, document_map.png; the figures .pdf or .svg after
    `settings.figure_format`). Raises SbmoeError for a model without an MoE block.
    """
    from sbmoe.analysis.plots import plot_embedding_map, plot_expert_shares
    from sbmoe.analysis.routing import route, routing_summary
    from sbmoe.data import load_dataset
    from sbmoe.evaluation.pipeline import pool_collection
    from sbmoe.io import provenance, write_json
    from sbmoe.modeling.loading import load_model
    from sbmoe.retrieval.encode import EmbeddingCache, default_device

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
    pooled = pool_collection(
        model, tokenizer, corpus, queries, qrels, cache=EmbeddingCache(), **settings.encoding(device)
    )
    query_ids = pooled.query_ids
    mode = model.config.default_mode
    doc_experts, doc_probs = route(model, pooled.documents, mode)  # [Nd], [Nd, E]
    query_experts, query_probs = route(model, pooled.queries, mode)  # [Nq], [Nq, E]
    # the block's own top-1 choice: the gate's argmax, the nearest prototype or the null expert
    expert_source = (
        "random gate (hash of each text's tokens)"
        if model.moe.random_gate
        else "router's top-1 choice (eval mode, no noise)"
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
        "corpus_from_cache": pooled.documents_from_cache,
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
    if len(pooled.documents) >= 2:
        plot_embedding_map(
            pooled.documents.vectors,
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
