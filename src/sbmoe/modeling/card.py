"""The model card (README.md) written into every model folder: Hugging Face metadata and what a user needs.

Built with huggingface_hub's `ModelCard` / `ModelCardData`: the metadata (base_model, datasets,
library_name, tags, pipeline_tag) is what the Hub indexes; the body gives the block's settings, how to load
the model with sbmoe, transformers and sentence-transformers, and what is known of its training and its
last evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from sbmoe.data.download import BEIR_MD5
from sbmoe.io import atomic_write_text

from .config import SBMoEConfig

logger = logging.getLogger(__name__)


def model_card(
    config: SBMoEConfig,
    *,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of a model with `config`.

    base_model: the base encoder's name (a hub id goes into the metadata; a local folder only into the text).
    training: what trained it (e.g. {"datasets": [...], "system": ..., "seed": ..., "epochs": ...,
    "validation ndcg@10": ...}). Evaluations are added later, by `record_evaluation`.
    """
    from .loading import MINILM_ALIAS, MINILM_HUB_ID  # loading writes cards: imported here, not at the top

    base_model = MINILM_HUB_ID if base_model == MINILM_ALIAS else base_model
    training = training or {}
    data = ModelCardData(
        library_name="transformers",
        base_model=base_model if base_model and _is_hub_id(base_model) else None,
        datasets=[f"BeIR/{name}" for name in training.get("datasets", ()) if name in BEIR_MD5] or None,
        tags=["sbmoe", "dense-retrieval", "mixture-of-experts", "feature-extraction", "custom_code"],
        pipeline_tag="feature-extraction",
    )
    block = config.block_settings() if config.use_moe else None
    block_text = ", then a single mixture-of-experts block after the last layer (SB-MoE, arXiv 2510.15683)"
    cosine = " (L2-normalised: cosine)" if config.normalize else ""
    lines = [
        f"# {'SB-MoE' if block else 'Bi-encoder'} retriever{f' on {base_model}' if base_model else ''}",
        "",
        f"A dense retriever written by sbmoe: a BERT-family encoder, {config.pooling} pooling"
        f"{block_text if block else ''}. Texts are scored by the dot product of their embeddings{cosine}.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| pooling | {config.pooling} |",
        f"| normalize | {str(config.normalize).lower()} |",
        f"| query max length | {config.query_max_length} |",
        f"| document max length | {config.document_max_length} |",
    ]
    if block:
        lines += [f"| {name} | {_value(value)} |" for name, value in vars(block).items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from sbmoe.modeling import load_model          # pip install sbmoe",
        'model, tokenizer = load_model("THIS_FOLDER_OR_HUB_ID")',
        "```",
        "",
        "Without sbmoe, the folder's own code runs with transformers:",
        "",
        "```python",
        "from transformers import AutoModel, AutoTokenizer",
        'model = AutoModel.from_pretrained("THIS_FOLDER_OR_HUB_ID", trust_remote_code=True).eval()',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_HUB_ID", trust_remote_code=True)',
        'batch = tokenizer(["a query"], padding=True, truncation=True, return_tensors="pt")',
        'embeddings = model(batch["input_ids"], batch["attention_mask"], kind="query").embeddings  # [B, H]',
        '# kind: "query" or "document" (a query-side block takes queries only); scores are dot products',
        "```",
        "",
        "`sbmoe export --format sentence-transformers` writes a sentence-transformers folder of the same "
        "model (load it with `trust_remote_code=True`); `sbmoe evaluate --model THIS_FOLDER --dataset NAME` "
        "scores it on a BEIR collection.",
    ]
    if training:
        lines += ["", "## Training", "", *(f"- {key}: {_value(value)}" for key, value in training.items())]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


EVALUATION_HEADING = "## Evaluation"
METRIC_TYPES = {"ndcg@10": "ndcg_at_10", "recall@100": "recall_at_100", "mrr@10": "mrr_at_10",
                "map@100": "map_at_100", "p@1": "precision_at_1", "ndcg@3": "ndcg_at_3"}  # fmt: skip


def record_evaluations(folder: str | Path, summaries: list[dict[str, Any]]) -> bool:
    """Add evaluation summaries to the card (README.md) of a local model folder that has an sbmoe card
    (`record_evaluation`), replacing the file in one step. Returns whether the card was updated; a folder
    without such a card, or one that cannot be written (a warning), is left as it is."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return False
    try:
        card = ModelCard.load(path)
        if "sbmoe" not in (card.data.tags or []):
            return False
        for summary in summaries:
            card = record_evaluation(card, Path(folder).resolve().name, summary)
        atomic_write_text(path, card.content)
    except (OSError, ValueError) as error:
        logger.warning("evaluation not recorded in %s: %s", path, error)
        return False
    return True


def record_evaluation(card: ModelCard, model_name: str, summary: dict[str, Any]) -> ModelCard:
    """`card` with the metrics of one evaluation (`sbmoe evaluate`'s summary: dataset, split, mode and the
    metrics) in its model-index metadata (the results the Hub shows) and in an Evaluation table: one entry
    per collection, split and routing mode, replaced when that evaluation is run again."""
    mode = summary.get("mode") or "none"  # the metric's config: the Hub groups results by task and data
    dataset = summary["dataset"]
    new = [
        EvalResult(
            task_type="retrieval",
            task_name="Retrieval",
            dataset_type=f"BeIR/{dataset}" if dataset in BEIR_MD5 else dataset,
            dataset_name=dataset,
            dataset_split=summary["split"],
            metric_type=metric_type,
            metric_name=name,
            metric_config=mode,
            metric_value=round(float(summary[name]), 5),
        )
        for name, metric_type in METRIC_TYPES.items()
        if name in summary
    ]

    def entry(result: EvalResult) -> tuple[str, str, str]:
        return result.dataset_name, result.dataset_split or "", result.metric_config or "none"

    replaced = {entry(result) for result in new}
    results = [r for r in card.data.eval_results or [] if entry(r) not in replaced] + new
    card.data.eval_results, card.data.model_name = results, card.data.model_name or model_name
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for result in results:
        rows.setdefault(entry(result), {})[result.metric_name] = result.metric_value
    table = [
        "| collection | split | routing | " + " | ".join(METRIC_TYPES) + " |",
        "|---|---|---|" + "---|" * len(METRIC_TYPES),
        *(
            f"| {' | '.join(key)} | " + " | ".join(_value(metrics.get(m)) for m in METRIC_TYPES) + " |"
            for key, metrics in rows.items()
        ),
    ]
    body = card.text.split(f"\n{EVALUATION_HEADING}\n")[0].rstrip("\n")
    card.text = f"{body}\n\n{EVALUATION_HEADING}\n\n" + "\n".join(table) + "\n"
    return card


def _is_hub_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name and not name.startswith((".", "/", "~"))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return "null" if value is None else str(value)
