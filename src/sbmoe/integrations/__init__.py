"""Bridges to other tools: sentence-transformers export, an MTEB encoder, a BEIR dense retriever.

The names are imported on first use, so `import sbmoe.integrations` needs none of the optional packages:
`SbmoeMtebEncoder` needs mteb (`pip install sbmoe[mteb]`); `SbmoeBeirModel` needs only sbmoe (beir,
`pip install sbmoe[beir]`, runs the search).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SBMoEHead": "sbmoe.integrations.sentence_transformers",
    "export_sentence_transformers": "sbmoe.integrations.sentence_transformers",
    "SbmoeMtebEncoder": "sbmoe.integrations.mteb",
    "SbmoeBeirModel": "sbmoe.integrations.beir",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
