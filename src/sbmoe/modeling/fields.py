"""`setting()`: a dataclass field that carries its own help, so that a settings class is the one place a
setting is declared, documented and (by `sbmoe.commands.flags`) turned into a command-line flag."""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def setting(
    default: Any = MISSING, help: str = "", choices: tuple[str, ...] | None = None, null: str | None = None
) -> Any:
    """A field with its help text. choices: the allowed values; null: what a None default means.
    No default (MISSING): a required setting."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if null is not None:
        metadata["null"] = null
    return field(default=default, metadata=metadata)
