"""sbmoe: dense retrieval with a Single-Block Mixture of Experts.

`import sbmoe` is cheap: the model classes load on first use (`sbmoe.SBMoEModel`, `sbmoe.load_model`).
Importing them registers SB-MoE folders with transformers' `AutoConfig` and `AutoModel`.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SBMoEConfig", "SBMoEModel", "__version__", "load_model"]

if TYPE_CHECKING:
    from sbmoe.modeling import SBMoEConfig, SBMoEModel, load_model


def __getattr__(name: str) -> Any:
    if name in ("SBMoEConfig", "SBMoEModel", "load_model"):
        return getattr(importlib.import_module("sbmoe.modeling"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `AutoModel.from_pretrained(folder)` works for SB-MoE folders once sbmoe.modeling.model is imported. Whoever
# already imported transformers pays little more for it, so register now, as `import sbmoe` always did.
if "transformers" in sys.modules:
    importlib.import_module("sbmoe.modeling.model")
