"""The model card (README.md) written into every model folder: Hugging Face metadata and what a user needs.

Built with huggingface_hub's `ModelCard` / `ModelCardData`: the metadata (base_model, datasets,
library_name, tags, pipeline_tag) is what the Hub indexes; the body gives the block's settings, how to load
the model with sbmoe, transformers and sentence-transformers, and what is known of its training and its
last evaluation.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from sbmoe.data.download import BEIR_MD5

from .config import SBMoEConfig


def model_card(
    config: SBMoEConfig,
    *,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of a model with `config`.

    base_model: the base encoder's name (a hub id goes into the metadata; a local folder only into the text).
    training: what trained it (e.g. {"datasets": [...], "system": ..., "seed": ..., "epochs": ...,
    "validation ndcg@10": ...}); evaluation: its last evaluation ({"dataset", "split", metric: value, ...}).
    """
    from .loading import MINILM_ALIAS, MINILM_HUB_ID  # loading writes cards: imported here, not at the top

    base_model = MINILM_HUB_ID if base_model == MINILM_ALIAS else base_model
    training, evaluation = training or {}, evaluation or {}
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
        'embeddings = model(batch["input_ids"], batch["attention_mask"]).embeddings  # [B, H], dot product',
        "```",
        "",
        "`sbmoe export --format sentence-transformers` writes a sentence-transformers folder of the same "
        "model (load it with `trust_remote_code=True`); `sbmoe evaluate --model THIS_FOLDER --dataset NAME` "
        "scores it on a BEIR collection.",
    ]
    if training:
        lines += ["", "## Training", "", *(f"- {key}: {_value(value)}" for key, value in training.items())]
    if evaluation:
        lines += [
            "",
            "## Last evaluation",
            "",
            *(f"- {key}: {_value(value)}" for key, value in evaluation.items()),
        ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


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
