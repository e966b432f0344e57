"""sbmoe: dense retrieval with a Single-Block Mixture of Experts."""

from transformers import AutoConfig, AutoModel

from sbmoe.modeling import SBMoEConfig, SBMoEModel, load_model

__version__ = "0.1.0"

# `AutoModel.from_pretrained(folder)` works for SB-MoE folders once sbmoe is imported.
AutoConfig.register(SBMoEConfig.model_type, SBMoEConfig)
AutoModel.register(SBMoEConfig, SBMoEModel)

__all__ = ["SBMoEConfig", "SBMoEModel", "__version__", "load_model"]
