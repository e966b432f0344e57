"""Models: configuration, pooling, the SB-MoE model and its loading."""

from sbmoe.modeling.config import SBMoEConfig
from sbmoe.modeling.loading import MINILM_ALIAS, load_model, resolve_model_name
from sbmoe.modeling.model import SBMoEModel, SBMoEOutput

__all__ = ["MINILM_ALIAS", "SBMoEConfig", "SBMoEModel", "SBMoEOutput", "load_model", "resolve_model_name"]
