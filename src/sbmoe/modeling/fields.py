"""`setting()`: a dataclass field that carries its own help, so that a settings class is the one place a
setting is declared, documented and (by `sbmoe.commands.flags`) turned into a command-line flag."""

from __future__ import annotations

from dataclasses import MISSING, field, fields
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


def split_names(text: str) -> list[str]:
    """Comma-separated names, as a flag or a config file gives several: "a, b" -> ["a", "b"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


def check_choices(settings: Any, of: type | None = None) -> None:
    """Raise ValueError naming the first field of the dataclass instance `settings` (only the fields of class
    `of`, when given) whose value is not among the choices its `setting()` declares; each name of a tuple
    field (several choices at once) is checked. None passes where it is the field's default (a setting left
    to someone else, e.g. the model)."""
    for spec in fields(of or settings):
        choices = spec.metadata.get("choices")
        value = getattr(settings, spec.name)
        if choices is None or (value is None and spec.default is None):
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if item not in choices:
                raise ValueError(f"{spec.name} must be one of {list(choices)}, got {item!r}")
