"""`EvaluateSettings`: what `sbmoe evaluate` does, declared once (the command's flags are made from it).

Imports no numpy, torch or transformers, so that `sbmoe evaluate --help` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbmoe.modeling.fields import setting
from sbmoe.modeling.pooling import POOLING_METHODS
from sbmoe.modeling.precision import DTYPE_HELP, DTYPES
from sbmoe.retrieval.choices import BACKENDS, INDEX_TYPES

SELF_HIT_CHOICES = ("auto", "yes", "no")


@dataclass
class EvaluateSettings:
    """What `sbmoe evaluate` does. None for a model setting keeps the model's own value."""

    model: str = setting(help="SB-MoE folder, encoder folder, hub id, or minilm-l6")
    dataset: str = setting(help="collection name (under --data-dir) or folder")
    split: str = setting("test", "qrels split")
    data_dir: str | None = setting(None, "folder of BEIR collections", null="$SBMOE_DATA")
    output_dir: str | None = setting(None, "where results go", null="runs/evaluate/DATASET-SPLIT-MODEL")
    batch_size: int = setting(32, "texts per forward pass")
    top_k: int = setting(1000, "hits per query in the run")
    drop_self_hits: str = setting(
        "auto",
        "drop hits whose doc id equals the query id; auto = only where queries are corpus documents",
        SELF_HIT_CHOICES,
    )
    backend: str = setting("torch", "exact search backend", BACKENDS)
    pooling: str | None = setting(None, "override the model's pooling", POOLING_METHODS, null="the model's")
    normalize: bool | None = setting(None, "override L2 normalisation", null="the model's")
    query_max_length: int | None = setting(None, "override the queries' max tokens", null="the model's")
    document_max_length: int | None = setting(None, "override the documents' max tokens", null="the model's")
    cache_dir: str | None = setting(None, "embedding cache", null="$SBMOE_CACHE or ~/.cache/sbmoe")
    use_cache: bool = setting(True, "read and write cached embeddings")
    progress: bool = setting(True, "progress bars")
    trust_remote_code: bool = setting(False, "allow a model's own code to run")
    modes: tuple[str, ...] | None = setting(
        None,
        "SB-MoE routing modes, encoded once, one result folder per mode",
        null="the model's default_mode",
    )
    per_mode_folders: bool | None = setting(
        None, "results in OUT/<mode>/ for each mode", null="only when several modes"
    )
    index_type: str = setting(
        "exact", "exact search, or an approximate index with its recall against exact reported", INDEX_TYPES
    )
    index_settings: dict[str, Any] | None = setting(
        None, "settings of the approximate index (see ann_settings)", null="its defaults"
    )
    dtype: str = setting("float32", DTYPE_HELP, DTYPES)  # bfloat16: autocast; see precision.py

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.drop_self_hits not in SELF_HIT_CHOICES:
            raise ValueError(
                f"drop_self_hits must be one of {list(SELF_HIT_CHOICES)}, got {self.drop_self_hits!r}"
            )
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {list(INDEX_TYPES)}, got {self.index_type!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        for field in ("batch_size", "top_k"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")

    def resolved_output_dir(self, dataset_name: str) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        model_tag = Path(self.model.rstrip("/")).name or "model"
        return Path("runs") / "evaluate" / f"{dataset_name}-{self.split}-{model_tag}"
