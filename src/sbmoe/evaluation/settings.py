"""`EvaluateSettings`: what `sbmoe evaluate` does, declared once (the command's flags are made from it),
on `SplitSettings`: what every command that runs a model over a collection split shares (evaluate, analyze).

Imports no numpy, torch or transformers, so that `sbmoe evaluate --help` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbmoe.modeling.fields import check_choices, setting
from sbmoe.modeling.precision import DTYPE_HELP, DTYPES, resolve_dtype
from sbmoe.modeling.settings import EncoderOverrides
from sbmoe.retrieval.choices import BACKENDS, INDEX_TYPES, NUDGE_VARIANTS

SELF_HIT_CHOICES = ("auto", "yes", "no")


@dataclass
class SplitSettings:
    """A model run over one collection split, with its results in a folder. Subclasses set `command` (the
    default output folder is runs/<command>/DATASET-SPLIT-MODEL) and may redeclare a field to change its
    help; `__post_init__` checks every field declared with choices."""

    command = "evaluate"

    model: str = setting(help="SB-MoE folder, encoder folder, hub id, or minilm-l6")
    dataset: str = setting(help="collection name (under --data-dir) or folder")
    split: str = setting("test", "qrels split")
    data_dir: str | None = setting(None, "folder of BEIR collections", null="$SBMOE_DATA")
    output_dir: str | None = setting(None, "where results go", null="runs/COMMAND/DATASET-SPLIT-MODEL")
    batch_size: int = setting(32, "texts per forward pass")
    progress: bool = setting(True, "progress bars")
    dtype: str = setting("float32", DTYPE_HELP, DTYPES)  # bfloat16: autocast; see precision.py

    def __post_init__(self) -> None:
        check_choices(self)
        for field in ("model", "dataset", "split"):
            if not str(getattr(self, field)).strip():
                raise ValueError(f"{field} must not be empty")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def resolved_output_dir(self, dataset_name: str) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        model_tag = Path(self.model.rstrip("/")).name or "model"
        return Path("runs") / self.command / f"{dataset_name}-{self.split}-{model_tag}"

    def encoding(self, device: Any) -> dict[str, Any]:
        """How these settings encode on `device`: the keyword arguments of
        `sbmoe.evaluation.pipeline.pool_collection` (and `encode_cached`) other than the cache."""
        return {
            "batch_size": self.batch_size,
            "device": device,
            "progress": self.progress,
            "dtype": resolve_dtype(self.dtype, device),
        }


@dataclass
class EvaluateSettings(SplitSettings, EncoderOverrides):
    """What `sbmoe evaluate` does. None for a model setting keeps the model's own value."""

    output_dir: str | None = setting(None, "where results go", null="runs/evaluate/DATASET-SPLIT-MODEL")
    top_k: int = setting(1000, "hits per query in the run")
    drop_self_hits: str = setting(
        "auto",
        "drop hits whose doc id equals the query id; auto = only where queries are corpus documents",
        SELF_HIT_CHOICES,
    )
    backend: str = setting("torch", "exact search backend", BACKENDS)
    cache_dir: str | None = setting(None, "embedding cache", null="$SBMOE_CACHE or ~/.cache/sbmoe")
    use_cache: bool = setting(True, "read and write cached embeddings")
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
    record_in_card: bool = setting(
        True, "add the metrics to the model folder's card (README.md), if sbmoe wrote it"
    )
    seen_split: str = setting(
        "auto",
        "qrels split whose relevant documents count as seen in training: adds the unseen-documents view and "
        "the queries with / without a seen positive (auto: the model's training split if it was trained on "
        "this collection, else the collection's train split if it has one; none: no views)",
    )
    nudge: str | None = setting(
        None, "qrels split whose queries move their relevant documents' embeddings (NUDGE) before search"
    )
    nudge_variant: str = setting("n", "NUDGE-N (unit norm) or NUDGE-M (bounded move)", NUDGE_VARIANTS)
    prior: str | None = setting(
        None, "qrels split whose relevant documents gain a score bonus (the document prior) in search"
    )
    memorisation_seed: int = setting(42, "seed of the queries that choose the NUDGE or prior step")
    exclude_positives_of: str | None = setting(
        None,
        "with nudge or prior: leave out the fitting split's queries that share a relevant document with this "
        "split (e.g. test), as training does with the same setting",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.nudge is not None and self.prior is not None:
            raise ValueError("nudge and prior are two baselines: choose one")
        if self.split in (self.nudge, self.prior):
            raise ValueError(f"the evaluated split {self.split!r} cannot also fit NUDGE or the prior")
        if self.exclude_positives_of is not None and not (self.nudge or self.prior):
            raise ValueError(
                "exclude_positives_of filters the queries NUDGE or the prior is fitted on: set one"
            )
