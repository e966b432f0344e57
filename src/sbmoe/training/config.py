"""`TrainingConfig`: every setting of `sbmoe train`, its presets, and loading from YAML/JSON files."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from sbmoe.data.splits import HOLDOUTS
from sbmoe.errors import SbmoeError
from sbmoe.modeling.fields import check_choices, setting, split_names
from sbmoe.modeling.precision import DTYPE_HELP, DTYPES
from sbmoe.modeling.settings import BlockSettings, EncoderOverrides, block_settings_of

logger = logging.getLogger(__name__)

SYSTEMS = ("finetune", "sbmoe", "adapter", "gated-adapter", "random-gate")
# What a system fixes in the block; the other block fields are the run's own (see TrainingConfig).
SYSTEM_BLOCK: dict[str, dict[str, Any]] = {
    "adapter": {"num_experts": 1},
    "gated-adapter": {"num_experts": 1, "router": "sigmoid", "variant": "learned"},
    "random-gate": {"random_gate": True},
}
SCHEDULES = ("constant", "linear", "cosine")
SELECTIONS = ("best", "last")
# Experiment trackers `report_to` can name (sbmoe.training.tracking); none: train_log.jsonl only.
TRACKERS = ("tensorboard", "mlflow", "trackio", "wandb")

# The default recipe of each regime, for the optimisation fields left as None. Chosen on validation curves,
# never on a test split. Frozen encoder (only the block trains, on cached vectors): on a document-disjoint
# validation hold-out of SciFact's training queries (docs/results/recipe-clean), where memorising the training
# positives cannot pay, validation nDCG@10 falls with longer training; a cosine decay from 3e-3 over 10 epochs
# (5 % warm-up) ends highest of the schedules tried (10 to 60 epochs; constant 1e-4 and 1e-3), for the adapter
# and for learned N = 6. (On a random hold-out, whose positives training sees, 60 epochs won:
# docs/results/recipe.)
# Encoder training: a practitioner's schedule (warm-up, linear decay); 5e-5 was ahead of 2e-5 after each of 3
# epochs (one seed); the paper's 1e-6 barely moves the encoder. The last epoch is kept.
DEFAULT_RECIPE: dict[str, dict[str, Any]] = {
    "frozen": {"epochs": 10, "encoder_lr": 5e-5, "moe_lr": 3e-3, "schedule": "cosine", "warmup_ratio": 0.05},
    "full": {"epochs": 3, "encoder_lr": 5e-5, "moe_lr": 1e-3, "schedule": "linear", "warmup_ratio": 0.1},
}

# The authors' recipe per base encoder (SBMOE.md): temperature and epochs. Other bases get the
# TinyBERT/BERT row (temperature 1, 20 epochs) with a warning.
PAPER_BASES = {
    "huawei-noah/TinyBERT_General_4L_312D": {"temperature": 1.0, "epochs": 30},
    "google/bert_uncased_L-4_H-512_A-8": {"temperature": 1.0, "epochs": 20},
    "google-bert/bert-base-uncased": {"temperature": 1.0, "epochs": 20},
    "bert-base-uncased": {"temperature": 1.0, "epochs": 20},
    "facebook/contriever": {"temperature": 0.05, "epochs": 20},
}
PAPER_PRESET: dict[str, Any] = {
    "batch_size": 64,
    "encoder_lr": 1e-6,
    "moe_lr": 1e-4,
    "weight_decay": 0.01,
    "schedule": "constant",
    "warmup_ratio": 0.0,
    "max_grad_norm": None,
    "selection": "last",
    "early_stopping_patience": None,
    "validation_share": 0.05,
    "mask_duplicate_positives": False,
    "symmetric": False,
    "normalize": False,
    "pooling": "mean",
    "query_max_length": 512,
    "document_max_length": 512,
    "seed": 42,
    "variant": "faithful",
}


def _regime_default(name: str) -> str:
    """What None means for an optimisation setting: the DEFAULT_RECIPE value of each regime."""
    frozen, full = DEFAULT_RECIPE["frozen"][name], DEFAULT_RECIPE["full"][name]
    return str(full) if frozen == full else f"{frozen} with --freeze-encoder, else {full}"


@dataclass(kw_only=True)
class TrainingConfig(BlockSettings, EncoderOverrides):
    """What `sbmoe train` does. Fields left as None take the base encoder's own setting or a default.

    The block's settings are inherited from `BlockSettings` (one declaration, validated there), so a config
    file, the command line and an experiment grid name them exactly as the model's config.json does.
    `system` says what trains: finetune (no block), sbmoe, adapter (the block with one expert),
    gated-adapter (one expert scaled by a learned sigmoid gate) or random-gate (RANDOM-GATE). A system fixes
    some block fields (`SYSTEM_BLOCK`): they are set here, so training_config.json records the block that
    was built; a conflicting explicit value is an error, except num_experts, which the one-expert systems
    always set to 1. `init_from` upcycles a trained single-expert block into this run's experts.
    """

    base: str = setting(help="base encoder: folder, hub id, or minilm-l6")
    dataset: str = setting(
        help="collection name (under --data-dir) or folder; several joined by + (scifact+nfcorpus)"
    )
    output_dir: str = setting(help="new folder for the model, log and checkpoints")
    data_dir: str | None = setting(None, "folder of BEIR collections", null="$SBMOE_DATA")
    train_split: str = setting("train", "qrels split of the training queries")
    validation_split: str | None = setting(
        None, "qrels split of the validation queries", null="dev if the collection has one, else held out"
    )
    validation_share: float = setting(
        0.05, "share of training queries held out when there is no validation split"
    )
    validation_holdout: str = setting(
        "documents",
        "held-out validation queries: documents (whole groups of queries linked by shared positives, so "
        "that no validation positive is a training positive; queries where the collection allows no such "
        "split) or queries (a random sample)",
        HOLDOUTS,
    )
    exclude_positives_of: str | None = setting(
        None,
        "a qrels split (e.g. test): leave out every training query that shares a relevant document with it, "
        "so that it measures retrieval of documents training never saw",
    )
    validation_documents: int | None = setting(
        None, "documents besides the positives that validation searches", null="all (frozen encoder) or 1000"
    )
    # model (the block's fields come from BlockSettings)
    system: str = setting(
        "sbmoe",
        "what trains: finetune (no block), sbmoe, adapter (one expert), gated-adapter (one expert scaled "
        "by a learned sigmoid gate) or random-gate",
        SYSTEMS,
    )
    init_from: str | None = setting(
        None,
        "sparse upcycling: an SB-MoE folder with a 1-expert block (e.g. a trained adapter) whose expert "
        "starts every expert; the router starts fresh",
    )
    upcycle_noise: float = setting(0.01, "noise added to each upcycled tensor, times its std")
    # loss
    temperature: float = setting(0.05, "temperature of the contrastive loss")
    symmetric: bool = setting(False, "add the document->query term")
    mask_duplicate_positives: bool = setting(
        True, "mask in-batch documents that are also relevant to the query: they are not negatives"
    )
    hard_negatives: str | None = setting(None, "bm25, or a TREC run file to take negatives from")
    num_hard_negatives: int = setting(1, "hard negatives per query in a batch")
    hard_negative_depth: int = setting(
        100, "non-relevant top hits per query kept as hard-negative candidates"
    )
    # optimisation
    batch_size: int = setting(32, "queries per batch")
    epochs: int | None = setting(None, "passes over the training queries", null=_regime_default("epochs"))
    encoder_lr: float | None = setting(
        None, "the encoder's learning rate", null=_regime_default("encoder_lr")
    )
    moe_lr: float | None = setting(None, "the block's learning rate", null=_regime_default("moe_lr"))
    weight_decay: float = setting(0.01, "AdamW weight decay")
    schedule: str | None = setting(
        None, "learning-rate schedule", SCHEDULES, null=_regime_default("schedule")
    )
    warmup_ratio: float | None = setting(
        None, "share of the steps that warm the learning rate up", null=_regime_default("warmup_ratio")
    )
    max_grad_norm: float | None = setting(1.0, "gradient clipping norm (null in a config file: no clipping)")
    dtype: str = setting("float32", DTYPE_HELP, DTYPES)  # bfloat16: autocast; see precision.py
    freeze_encoder: bool = setting(False, "train only the block on cached pooled vectors (fast on a CPU)")
    cpu_threads: int | None = setting(
        None,
        "torch's CPU threads in the training loop; the last bits of the results can depend on it (a "
        "small matrix product's kernel differs by thread count), so a run is reproduced with the same",
        null="1 with --freeze-encoder (its small tensors are slower on more), else torch's default",
    )
    # selection, checkpoints, logging
    selection: str = setting(
        "last", "model kept: last or best validation nDCG@10 (with early stopping)", SELECTIONS
    )
    early_stopping_patience: int | None = setting(
        3, "selection best: validations without improvement before stopping (null in a config file: never)"
    )
    validate_every: int = setting(
        1, "validate every N epochs and after the last (with selection last, validation only monitors)"
    )
    checkpoint_every_steps: int | None = setting(
        None,
        "also save a checkpoint every N steps",
        null="at an epoch end when the last is a minute old, and after the last epoch",
    )
    seed: int = setting(42, "seed of the block, the batches and the held-out queries")
    encode_batch_size: int = setting(
        64, "texts per forward pass when encoding without gradients (cached vectors, validation)"
    )
    progress: bool = setting(True, "progress bars")
    report_to: tuple[str, ...] = setting(
        ("none",),
        "experiment trackers that also get the run's settings, step losses and validation metrics "
        "(comma-separated or repeated); train_log.jsonl is written in any case",
        ("none", *TRACKERS),
    )
    run_name: str | None = setting(
        None, "the run's name in experiment trackers", null="the output folder's name"
    )
    preset: str | None = setting(
        None, "the authors' recipe (batch 64, last epoch, ...), under the settings given", ("paper",)
    )
    trust_remote_code: bool = setting(False, "allow a model's own code to run")

    def __post_init__(self) -> None:
        self.report_to = tracker_names(self.report_to)
        check_choices(self)  # the system first: it decides other settings
        self._apply_system()
        for name, value in DEFAULT_RECIPE[self.regime].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__()  # the block's fields
        check_choices(self)  # schedule, dtype, selection, preset, ...
        for name in ("batch_size", "epochs", "encode_batch_size", "hard_negative_depth", "validate_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in (
            "checkpoint_every_steps",
            "early_stopping_patience",
            "validation_documents",
            "cpu_threads",
        ):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or value < (0 if name == "validation_documents" else 1)
            ):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: in-batch negatives need another query")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        for name in ("encoder_lr", "moe_lr", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0 < self.validation_share < 1:
            raise ValueError(f"validation_share must be in (0, 1), got {self.validation_share!r}")
        if self.num_hard_negatives < 0:
            raise ValueError(f"num_hard_negatives must be >= 0, got {self.num_hard_negatives!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}")
        if self.freeze_encoder and self.system == "finetune":
            raise ValueError(
                "freeze_encoder with system finetune leaves nothing to train; use adapter or sbmoe"
            )
        if not isinstance(self.upcycle_noise, int | float) or not self.upcycle_noise >= 0:
            raise ValueError(f"upcycle_noise must be >= 0, got {self.upcycle_noise!r}")
        if self.init_from is not None and self.system == "finetune":
            raise ValueError("init_from upcycles the block's experts; system finetune has no block")
        if self.apply_to != "both" and self.system == "finetune":
            raise ValueError(
                f"apply_to {self.apply_to!r} says which texts pass through the block; system finetune has no "
                "block (use adapter, sbmoe, gated-adapter or random-gate)"
            )

    def _apply_system(self) -> None:
        """Set the block fields the system fixes; refuse an explicit value that contradicts it."""
        defaults = {spec.name: spec.default for spec in fields(BlockSettings)}
        for name, value in SYSTEM_BLOCK.get(self.system, {}).items():
            current = getattr(self, name)
            if name != "num_experts" and current != value and current != defaults[name]:
                raise ValueError(f"system {self.system} sets {name} to {value!r}; got {name}={current!r}")
            setattr(self, name, value)
        if self.random_gate and self.system != "random-gate":
            raise ValueError(f"random_gate is the system random-gate; got system {self.system!r}")

    @property
    def regime(self) -> str:
        """ "frozen" (only the block trains, on cached vectors) or "full" (the encoder trains too)."""
        return "frozen" if self.freeze_encoder else "full"

    @property
    def uses_moe(self) -> bool:
        return self.system != "finetune"

    def model_settings(self) -> dict[str, Any]:
        """The block's settings this training run asks for (fields of `BlockSettings`)."""
        return asdict(block_settings_of(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_NAMES = {field.name for field in fields(TrainingConfig)}
# Settings that may differ between a run and its resumption.
RESUMABLE_FIELDS = {
    "progress",
    "report_to",
    "run_name",
    "epochs",
    "early_stopping_patience",
    "validate_every",
    "data_dir",
    "output_dir",
}
# Keys of settings written before the block's fields were one declaration, and before report_to.
LEGACY_KEYS = {"moe", "bf16", "tensorboard"}


def tracker_names(value: Any) -> tuple[str, ...]:
    """`report_to` as a config file, a flag or the code gives it (a name, comma-separated names, or a list of
    them) -> its names in order, each once; ("none",) when there are none. Raises ValueError for another
    type, or none beside a tracker. The names themselves are checked with the other choices."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"report_to must be a name or a list of names, got {value!r}")
    names = tuple(dict.fromkeys(name for item in items for name in split_names(item)))
    if "none" in names and len(names) > 1:
        raise ValueError(f"report_to none cannot be combined with trackers, got {','.join(names)}")
    return names or ("none",)


def upgrade_legacy_settings(settings: dict[str, Any], where: str, warn: bool = True) -> dict[str, Any]:
    """Old names to new ones: `moe` (the block variant) -> `variant`; `variant` holding a system name
    (finetune, sbmoe, adapter, random-gate) -> `system`; `bf16: true` -> `dtype: bfloat16`; `tensorboard:
    true` -> "tensorboard" added to `report_to`. Each logs a deprecation warning naming `where`.

    Raises SbmoeError when an old and a new key disagree.
    """
    settings = dict(settings)

    def deprecated(message: str) -> None:
        if warn:
            logger.warning("%s: %s (deprecated)", where, message)

    if settings.get("variant") in SYSTEMS:
        system = settings.pop("variant")
        if settings.get("system", system) != system:
            raise SbmoeError(
                f"{where}: variant {system!r} (a system) contradicts system {settings['system']!r}"
            )
        settings["system"] = system
        deprecated(
            f"variant {system} names a system: now system {system} (--system); variant is faithful|learned"
        )
    if "moe" in settings:
        variant = settings.pop("moe")
        if variant is not None:
            if settings.get("variant", variant) != variant:
                raise SbmoeError(f"{where}: moe {variant!r} contradicts variant {settings['variant']!r}")
            settings["variant"] = variant
            deprecated(f"moe {variant} is now variant {variant} (--variant)")
    if "bf16" in settings:
        dtype = "bfloat16" if settings.pop("bf16") else "float32"
        if settings.get("dtype", dtype) != dtype:
            raise SbmoeError(f"{where}: bf16 contradicts dtype {settings['dtype']!r}")
        settings["dtype"] = dtype
        deprecated(f"bf16 is now dtype {dtype} (--dtype)")
    if "tensorboard" in settings:
        enabled = settings.pop("tensorboard")
        if enabled is not None:
            report_to = _with_tensorboard(bool(enabled), settings.get("report_to"), where)
            if report_to is not None:
                settings["report_to"] = report_to
            deprecated("tensorboard is now a name in report_to (--report-to tensorboard)")
    return settings


def _with_tensorboard(enabled: bool, report_to: Any, where: str) -> Any:
    """`report_to` (None: not given) with the deprecated `tensorboard` setting folded in: "tensorboard" added
    when true, `report_to` as it was when false.

    Raises SbmoeError when they disagree (tensorboard true with report_to none given, or false with
    report_to naming tensorboard)."""
    try:
        names = tracker_names(report_to if report_to is not None else ())
    except ValueError as error:
        raise SbmoeError(f"{where}: {error}") from error
    if (enabled and report_to is not None and names == ("none",)) or (not enabled and "tensorboard" in names):
        raise SbmoeError(
            f"{where}: tensorboard {str(enabled).lower()} contradicts report_to {','.join(names)}"
        )
    if not enabled:
        return report_to
    return tuple(name for name in dict.fromkeys((*names, "tensorboard")) if name != "none")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of TrainingConfig fields. Unknown keys are an error naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError as error:
        raise SbmoeError(f"{path}: file not found") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise SbmoeError(f"{path}: cannot parse ({error})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SbmoeError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    data = upgrade_legacy_settings(data, str(path))
    unknown = sorted(set(data) - FIELD_NAMES)
    if unknown:
        raise SbmoeError(f"{path}: unknown setting(s) {unknown}; known settings: {sorted(FIELD_NAMES)}")
    return data


def resolve_config(file_settings: dict[str, Any], cli_settings: dict[str, Any]) -> TrainingConfig:
    """Preset, then the config file, then explicit command-line flags (None means not given).

    Old key names are accepted with a warning (`upgrade_legacy_settings`).
    """
    given = {key: value for key, value in cli_settings.items() if value is not None}
    file_settings = upgrade_legacy_settings(file_settings, "config file")
    merged = {**file_settings, **upgrade_legacy_settings(given, "command line")}
    preset = merged.get("preset")
    if preset == "paper":
        base_row = PAPER_BASES.get(str(merged.get("base")), {"temperature": 1.0, "epochs": 20})
        explicit = set(merged)
        merged = {**PAPER_PRESET, **base_row, **{key: merged[key] for key in explicit}}
    try:
        return TrainingConfig(**merged)
    except TypeError as error:  # a required field missing
        raise SbmoeError(f"training settings: {error}") from error
    except ValueError as error:
        raise SbmoeError(str(error)) from error
