"""Models: configuration, pooling, the SB-MoE model and its loading."""

from sbmoe.modeling.config import SBMoEConfig
from sbmoe.modeling.loading import MINILM_ALIAS, build_model, load_model, resolve_model_name, save_model
from sbmoe.modeling.model import SBMoEModel, SBMoEOutput

__all__ = [
    "MINILM_ALIAS",
    "SBMoEConfig",
    "SBMoEModel",
    "SBMoEOutput",
    "build_model",
    "load_model",
    "resolve_model_name",
    "save_model",
]
