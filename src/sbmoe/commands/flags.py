"""Flags generated from a settings dataclass: one per field, declared once, in the field's metadata.

    @dataclass
    class Settings:
        batch_size: int = field(default=32, metadata={"help": "texts per forward pass"})
        pooling: str | None = field(default=None, metadata={"help": "...", "choices": ("mean", "cls"),
                                                           "null": "the model's own"})

gives `--batch-size N` (help "texts per forward pass (default: 32)") and `--pooling {mean,cls}`. The
metadata keys are those of transformers' `HfArgumentParser` ("help", "choices"), plus "null": what a None
default means, shown as the default. Booleans are `--x/--no-x`; a boolean that may be None (keep another
setting, e.g. the model's own) takes a value too, `--x true|false`. `Optional[X]` parses as X. A
`tuple[str, ...]` field takes several names, comma-separated or with the flag repeated
(`--report-to wandb,mlflow --report-to tensorboard`); its settings class checks them.

Not `HfArgumentParser` itself: importing it imports transformers (over a second before any flag is
parsed, so `sbmoe --help` could not be fast), it has no `--no-x` for a boolean defaulting to false, and
no way to tell a flag left out from a flag given with its default, which a config file needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

from sbmoe.commands.common import parse_bool
from sbmoe.modeling.fields import split_names


def add_settings_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    not_given: bool = False,
    check_choices: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Add one flag per field of the dataclass `settings` to `parser` (or an argument group).

    exclude: fields that get no flag (the command sets them another way); only: the fields that do.
    not_given: every flag defaults to None (left out), so that only the flags given are set, over a config
        file; the help still shows the field's own default. Otherwise a flag defaults to its field's
        default, and a field without a default is a required flag.
    check_choices: argparse refuses a value outside metadata["choices"]; False shows them and leaves the
        check to the settings class, whose message names the field.
    overrides: per field name, add_argument keywords that replace the generated ones.
    """
    hints = typing.get_type_hints(settings)
    excluded = set(exclude)
    overrides = overrides or {}
    chosen = set(only) if only is not None else None
    for spec in dataclasses.fields(settings):
        if spec.name in excluded or (chosen is not None and spec.name not in chosen):
            continue
        kind, optional = _unwrap_optional(hints[spec.name], spec.name, settings)
        flag = "--" + spec.name.replace("_", "-")
        has_default = spec.default is not dataclasses.MISSING
        options: dict[str, Any] = {
            "default": None if not_given or not has_default else spec.default,
            "help": _help(spec, kind),
        }
        if not has_default and not not_given:
            options["required"] = True
        if kind is bool and optional:  # None keeps another setting: --x, --x true|false, --no-x
            options.update(nargs="?", const=True, type=parse_bool, metavar="{true,false}")
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:  # no argparse choices: it would compare each list of names, not each name
            if not not_given:
                raise TypeError(
                    f"{settings.__name__}.{spec.name}: a tuple field's flag needs not_given (argparse's "
                    "extend would add the names given to the default instead of replacing it)"
                )
            options.update(action="extend", type=split_names, metavar=f"{_metavar(spec, 'NAME')}[,...]")
        else:
            options["type"] = kind
            choices = spec.metadata.get("choices")
            if choices is not None:
                options["metavar"] = _metavar(spec, None)
                if check_choices:
                    options["choices"] = tuple(choices)
        if kind is bool and optional:
            options["help"] = options["help"].replace(" (default:", f"; --no-{flag[2:]}: false (default:", 1)
        default = options.pop("default")
        options.update(overrides.get(spec.name, {}))
        # The default is set after construction: BooleanOptionalAction would add it to the help a second time.
        parser.add_argument(flag, **options).default = default
        if kind is bool and optional:
            parser.add_argument(
                "--no-" + flag[2:], dest=spec.name, action="store_false", help=argparse.SUPPRESS
            )


def _metavar(spec: dataclasses.Field, fallback: str | None) -> str | None:
    """{a,b,c} from the field's choices, else `fallback`."""
    choices = spec.metadata.get("choices")
    return fallback if choices is None else "{" + ",".join(map(str, choices)) + "}"


def _unwrap_optional(hint: Any, name: str, settings: type) -> tuple[type, bool]:
    """X or Optional[X] -> (X, whether None is allowed); X must be a plain type argparse can call, or
    tuple[str, ...] (returned as tuple)."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        hint = members[0] if len(members) == 1 else None
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return tuple, optional
    if hint not in (bool, int, float, str):
        raise TypeError(
            f"{settings.__name__}.{name}: no flag for a field of type {hint!r}; exclude it and give it "
            "a flag of its own"
        )
    return hint, optional


def _help(spec: dataclasses.Field, kind: type) -> str:
    """The field's help with its default; % escaped for argparse."""
    text = spec.metadata.get("help")
    if not text:
        raise TypeError(f"field {spec.name}: no metadata['help'] to show in --help")
    if spec.default is dataclasses.MISSING:
        return text.replace("%", "%%")
    if spec.default is None:
        default = spec.metadata.get("null", "none")
    elif kind is tuple:
        default = ",".join(spec.default)
    else:
        default = str(spec.default).lower() if kind is bool else spec.default
    return f"{text} (default: {default})".replace("%", "%%")


def flag_values(args: argparse.Namespace, settings: type) -> dict[str, Any]:
    """The values parsed for the fields of `settings` that have a flag (by field name)."""
    return {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(settings)
        if hasattr(args, spec.name)
    }
