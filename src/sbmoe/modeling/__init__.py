"""Models: configuration, pooling, the SB-MoE model and its loading.

The names below load on first use, so that `sbmoe.modeling.settings`, `.precision` and `.pooling` import
without transformers (the command line reads them to build its flags).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MINILM_ALIAS": "sbmoe.modeling.loading",
    "SBMoEConfig": "sbmoe.modeling.config",
    "SBMoEModel": "sbmoe.modeling.model",
    "SBMoEOutput": "sbmoe.modeling.model",
    "build_model": "sbmoe.modeling.loading",
    "load_model": "sbmoe.modeling.loading",
    "resolve_model_name": "sbmoe.modeling.loading",
    "save_model": "sbmoe.modeling.loading",
}

if TYPE_CHECKING:
    from sbmoe.modeling.config import SBMoEConfig
    from sbmoe.modeling.loading import MINILM_ALIAS, build_model, load_model, resolve_model_name, save_model
    from sbmoe.modeling.model import SBMoEModel, SBMoEOutput


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
