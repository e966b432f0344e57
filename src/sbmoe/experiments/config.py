"""`ExperimentConfig`: a grid of runs from a YAML file, validated completely before any run starts.

    name: cpu-scifact
    bases: [minilm-l6]                       # base encoders (folder, hub id, or minilm-l6)
    train_datasets: [scifact]                # in-domain: each is trained on and tested on its own split
    zero_shot_datasets: [arguana, cranfield] # tested with models trained elsewhere
    systems: [zero-shot, adapter, random-gate, sbmoe-faithful, sbmoe-learned]   # or a mapping, below
    num_experts: [3, 6, 9, 12]               # for sbmoe-* and random-gate (adapter, gated-adapter: 1)
    modes: [top1, all]                       # inference routing evaluated for systems with a block
    seeds: [1, 2, 3]
    train_split: train
    test_split: test
    top_k: 1000                              # hits per query written to each run file
    dtype: float32                           # the encoder's precision in training and evaluation (or auto)
    keep_models: false                       # or a list of system labels
    training: {freeze_encoder: true, epochs: 20}   # TrainingConfig fields shared by every run

`systems` may also map a label to settings: `sbmoe-learned-lb: {system: sbmoe-learned, num_experts: [6],
router_aux_loss_coef: 0.01}` (system defaults to the label; other keys are TrainingConfig fields, every
block field of `BlockSettings` included, except those the system fixes, e.g. variant for sbmoe-learned).
`init_from: "@adapter"` upcycles from the model of the system labelled `adapter` trained in the same grid
(same base, collection and seed): that system must have one expert and be listed before; its models are
kept. Only its block is taken (sparse upcycling); the run's encoder is the base.

A training collection may name several joined by "+": `train_datasets: [scifact, nfcorpus-preproc,
scifact+nfcorpus-preproc]` also trains one model on both (batches drawn within a collection), tested
in-domain on each one's test split. Every collection named must have the training and test splits.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sbmoe.data import load_dataset
from sbmoe.errors import SbmoeError
from sbmoe.modeling.moe import parse_mode
from sbmoe.retrieval.choices import NUDGE_VARIANTS
from sbmoe.training.config import FIELD_NAMES as TRAINING_FIELDS
from sbmoe.training.config import SYSTEM_BLOCK
from sbmoe.training.data import COLLECTION_SEPARATOR, collection_names

SYSTEMS = (
    "zero-shot", "finetune", "adapter", "gated-adapter", "random-gate", "sbmoe-faithful", "sbmoe-learned",
    "nudge", "prior",
)  # fmt: skip
# Systems that train nothing: the base's (or another system's, `model: "@label"`) embeddings with the
# training collection's documents moved by NUDGE or boosted by the document prior, fitted on the training
# split (`sbmoe.evaluation.memorisation`). Their settings are those below, not training settings.
MEMORISING = {"nudge": {"model", "nudge_variant"}, "prior": {"model"}}
# What each system means for `sbmoe train` (TrainingConfig fields; the block fields a training system fixes
# are in sbmoe.training.config.SYSTEM_BLOCK).
SYSTEM_TRAINING: dict[str, dict[str, Any]] = {
    "finetune": {"system": "finetune"},
    "adapter": {"system": "adapter"},
    "gated-adapter": {"system": "gated-adapter", "variant": "learned"},
    "random-gate": {"system": "random-gate"},
    "sbmoe-faithful": {"system": "sbmoe", "variant": "faithful"},
    "sbmoe-learned": {"system": "sbmoe", "variant": "learned"},
}
# Run settings fixed by the grid itself, not to be set under `training` or a system's entry.
GRID_OWNED = {
    "base",
    "dataset",
    "output_dir",
    "seed",
    "system",
    "num_experts",
    "train_split",
    "data_dir",
}


@dataclass(frozen=True)
class SystemSpec:
    label: str
    system: str
    num_experts: tuple[int | None, ...]
    training: dict[str, Any]  # TrainingConfig fields; for nudge and prior, their own settings (MEMORISING)


@dataclass
class ExperimentConfig:
    name: str
    bases: list[str]
    train_datasets: list[str]
    systems: list[SystemSpec]
    zero_shot_datasets: list[str] = field(default_factory=list)
    num_experts: list[int] = field(default_factory=lambda: [6])
    modes: list[str] = field(default_factory=lambda: ["top1", "all"])
    seeds: list[int] = field(default_factory=lambda: [42])
    train_split: str = "train"
    test_split: str = "test"
    top_k: int = 1000  # hits per query in each run file; the six metrics need 100
    keep_models: bool | list[str] = False  # or the labels of the systems whose models are kept
    training: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    dtype: str = "float32"  # the encoder's compute dtype, grid-wide: float32, bfloat16 or auto

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TOP_LEVEL = {
    "name", "bases", "train_datasets", "zero_shot_datasets", "systems", "num_experts", "modes", "seeds",
    "train_split", "test_split", "keep_models", "training", "data_dir", "top_k", "dtype",
}  # fmt: skip


def load_experiment_config(
    path: str | Path, data_dir: str | None = None, check_data: bool = True
) -> ExperimentConfig:
    """Read and check a grid file: every key, system and mode, and (check_data) every collection and its
    splits."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SbmoeError(f"{path}: file not found") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SbmoeError(f"{path}: cannot parse ({error})") from error
    if not isinstance(raw, dict):
        raise SbmoeError(f"{path}: expected a mapping of experiment settings")
    return build_experiment_config(raw, where=str(path), data_dir=data_dir, check_data=check_data)


def build_experiment_config(
    raw: dict[str, Any], where: str, data_dir: str | None = None, check_data: bool = True
) -> ExperimentConfig:
    def fail(message: str) -> SbmoeError:
        return SbmoeError(f"{where}: {message}")

    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise fail(f"unknown key(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    for key in ("name", "bases", "train_datasets", "systems"):
        if key not in raw:
            raise fail(f"missing key {key!r}")
    lists = {}
    list_keys = {
        "bases": str,
        "train_datasets": str,
        "zero_shot_datasets": str,
        "num_experts": int,
        "modes": str,
    }
    for key, kind in {**list_keys, "seeds": int}.items():
        value = raw.get(key, [])
        if key in raw and (
            not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value)
        ):
            raise fail(f"{key} must be a non-empty list of {kind.__name__}s, got {value!r}")
        lists[key] = value
    if not isinstance(raw["name"], str) or not re.fullmatch(r"[\w.-]+", raw["name"]):
        raise fail(f"name must be letters, digits, '.', '_' or '-', got {raw['name']!r}")
    training = raw.get("training", {}) or {}
    if not isinstance(training, dict):
        raise fail("training must be a mapping of TrainingConfig fields")
    _check_training_keys(training, "training", fail)

    defaults = ExperimentConfig(name="x", bases=[], train_datasets=[], systems=[])
    num_experts = lists["num_experts"] or defaults.num_experts
    systems = _parse_systems(raw["systems"], num_experts, fail)
    modes = lists["modes"] or defaults.modes
    for mode in modes:
        try:
            parse_mode(mode, max((n or 1) for s in systems for n in s.num_experts) if systems else 1)
        except ValueError as error:
            raise fail(f"modes: {error}") from error
    config = ExperimentConfig(
        name=raw["name"],
        bases=lists["bases"],
        train_datasets=lists["train_datasets"],
        systems=systems,
        zero_shot_datasets=lists["zero_shot_datasets"],
        num_experts=num_experts,
        modes=modes,
        seeds=lists["seeds"] or defaults.seeds,
        train_split=raw.get("train_split", "train"),
        test_split=raw.get("test_split", "test"),
        top_k=_positive_int(raw.get("top_k", 1000), "top_k", fail),
        keep_models=_keep_models(raw.get("keep_models", False), systems, fail),
        training=training,
        data_dir=raw.get("data_dir", data_dir),
        dtype=_dtype(raw.get("dtype", "float32"), fail),
    )
    for name in config.train_datasets:
        try:
            collection_names(name)
        except SbmoeError as error:
            raise fail(f"train_datasets: {error}") from error
    several = [name for name in config.zero_shot_datasets if COLLECTION_SEPARATOR in name]
    if several:
        raise fail(
            f"zero_shot_datasets: {several} join collections with '+'; a zero-shot test is one collection"
        )
    if check_data:
        _check_collections(config, fail)
    return config


def _dtype(value: Any, fail) -> str:
    from sbmoe.modeling.precision import DTYPES

    if value not in DTYPES:
        raise fail(f"dtype must be one of {list(DTYPES)}, got {value!r}")
    return value


def _positive_int(value: Any, name: str, fail) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise fail(f"{name} must be a positive integer, got {value!r}")
    return value


def _keep_models(value: Any, systems: list[SystemSpec], fail) -> bool | list[str]:
    if isinstance(value, bool):
        return value
    labels = {spec.label for spec in systems}
    if isinstance(value, list) and all(isinstance(v, str) and v in labels for v in value):
        return value
    raise fail(
        f"keep_models must be true, false or a list of system labels from {sorted(labels)}, got {value!r}"
    )


def _check_training_keys(settings: dict[str, Any], where: str, fail) -> None:
    unknown = sorted(set(settings) - TRAINING_FIELDS)
    if unknown:
        raise fail(f"{where}: unknown training setting(s) {unknown}")
    if where == "training" and init_from_label(settings) is not None:
        raise fail("training: init_from '@label' belongs in a system's entry (it names another system)")
    if "dtype" in settings or "bf16" in settings:
        raise fail(
            f"{where}: the encoder's dtype is grid-wide (training and evaluation): set dtype at the top"
        )
    owned = sorted(set(settings) & GRID_OWNED)
    if owned:
        raise fail(f"{where}: {owned} are set by the grid itself, not under training")


def _parse_systems(raw: Any, num_experts: list[int], fail) -> list[SystemSpec]:
    if isinstance(raw, list):
        raw = {name: {} for name in raw}
    if not isinstance(raw, dict) or not raw:
        raise fail("systems must be a non-empty list of system names or a mapping label -> settings")
    specs = []
    for label, settings in raw.items():
        settings = dict(settings or {})
        system = settings.pop("system", label)
        if system not in SYSTEMS:
            raise fail(f"systems: {label!r} is not a known system; known: {list(SYSTEMS)} (or set system:)")
        if system in MEMORISING:
            specs.append(_memorising_spec(label, system, settings, specs, fail))
            continue
        counts = settings.pop("num_experts", None)
        if counts is not None and (
            not isinstance(counts, list) or not all(isinstance(n, int) and n >= 1 for n in counts)
        ):
            raise fail(f"systems: {label}.num_experts must be a list of integers >= 1, got {counts!r}")
        experts = _expert_counts(system, counts or num_experts)
        _check_training_keys(settings, f"systems.{label}", fail)
        fixed = _fixed_settings(system)
        clashes = sorted(key for key in settings if key in fixed and settings[key] != fixed[key])
        if clashes:
            raise fail(
                f"systems.{label}: system {system} fixes "
                + ", ".join(f"{key} to {fixed[key]!r}" for key in clashes)
            )
        _check_init_from(label, settings, specs, fail)
        specs.append(SystemSpec(label=label, system=system, num_experts=experts, training=settings))
    return specs


def _memorising_spec(
    label: str, system: str, settings: dict[str, Any], earlier: list[SystemSpec], fail
) -> SystemSpec:
    """nudge or prior: on the base, or on the model of a trained system listed before (`model: "@label"`,
    one number of experts), whose number of experts the runs share."""
    unknown = sorted(set(settings) - MEMORISING[system])
    if unknown:
        raise fail(f"systems.{label}: {system} trains nothing; {unknown} are not its settings "
                   f"(it has {sorted(MEMORISING[system])})")  # fmt: skip
    variant = settings.get("nudge_variant", "n")
    if variant not in NUDGE_VARIANTS:
        raise fail(f"systems.{label}.nudge_variant must be one of {list(NUDGE_VARIANTS)}, got {variant!r}")
    source = settings.get("model")
    if source is None:
        return SystemSpec(label, system, (None,), settings)
    spec = next((s for s in earlier if isinstance(source, str) and s.label == source.removeprefix("@")), None)
    if (
        not isinstance(source, str) or not source.startswith("@") or spec is None
        or spec.system in ("zero-shot", *MEMORISING) or len(spec.num_experts) != 1
    ):  # fmt: skip
        raise fail(
            f"systems.{label}.model {source!r}: must name a trained system with one number of experts listed "
            f'before {label!r} (e.g. "@adapter"); listed before: {[s.label for s in earlier]}'
        )
    return SystemSpec(label, system, spec.num_experts, settings)


def _check_init_from(label: str, settings: dict[str, Any], earlier: list[SystemSpec], fail) -> None:
    """`init_from: "@other"` names a system listed before, with one expert (its model seeds the experts)."""
    source = settings.get("init_from")
    if not (isinstance(source, str) and source.startswith("@")):
        return
    spec = next((spec for spec in earlier if spec.label == source[1:]), None)
    if spec is None or spec.num_experts != (1,):
        raise fail(
            f"systems.{label}.init_from {source!r}: must name a system with 1 expert listed before "
            f"{label!r} (e.g. @adapter); listed before: {[spec.label for spec in earlier]}"
        )


def init_from_label(training: dict[str, Any]) -> str | None:
    """The system label an `init_from: "@label"` setting refers to, or None."""
    return _label(training.get("init_from"))


def model_label(spec: SystemSpec) -> str | None:
    """The system whose model a nudge or prior system adjusts (`model: "@label"`), or None (the base)."""
    return _label(spec.training.get("model")) if spec.system in MEMORISING else None


def _label(source: Any) -> str | None:
    return source[1:] if isinstance(source, str) and source.startswith("@") else None


def _fixed_settings(system: str) -> dict[str, Any]:
    """The TrainingConfig fields a grid system fixes: its training system and the block fields that fixes."""
    training = SYSTEM_TRAINING.get(system, {})
    return {**training, **SYSTEM_BLOCK.get(training.get("system"), {})}


def _expert_counts(system: str, counts: list[int]) -> tuple[int | None, ...]:
    """The numbers of experts a system runs with: none without a block, the fixed one of a one-expert
    system, else the grid's."""
    fixed = _fixed_settings(system)
    if system == "zero-shot" or fixed["system"] == "finetune":
        return (None,)
    return (fixed["num_experts"],) if "num_experts" in fixed else tuple(counts)


def _check_collections(config: ExperimentConfig, fail) -> None:
    """Every collection exists and has the splits the grid uses: found now, not an hour into the run. A
    training entry joining several collections ("a+b") checks each."""
    for name in dict.fromkeys(c for entry in config.train_datasets for c in collection_names(entry)):
        _check_splits(name, (config.train_split, config.test_split), config.data_dir, fail)
    for name in config.zero_shot_datasets:
        _check_splits(name, (config.test_split,), config.data_dir, fail)


def _check_splits(name: str, splits: tuple[str, ...], data_dir: str | None, fail) -> None:
    try:
        dataset = load_dataset(name, data_dir)
    except SbmoeError as error:
        raise fail(f"collection {name!r}: {error}") from error
    missing = [split for split in splits if split not in dataset.splits()]
    if missing:
        raise fail(f"collection {name!r} has no split(s) {missing}; it has {dataset.splits()}")
