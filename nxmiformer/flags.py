"""Command-line flags generated from configuration dataclasses, so a field cannot drift from its flag.

Each field becomes ``--field-name`` with the type of its annotation and the ``help`` of its
metadata (a field without help is an error when the parser is built). Flags default to "not
given" (``argparse.SUPPRESS``): :func:`given` returns only what the user typed, so a config's
own defaults, then a preset, then explicit flags decide a value, in that order.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# names a command gives some fields (field -> flag name without dashes)
Rename = Mapping[str, str]


def _flag_type(hint) -> tuple[Callable[[str], Any], bool]:
    """The argparse type of an annotation, and whether it is a boolean switch. An optional
    field (``int | None``) also takes ``none``."""
    optional = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    if optional:
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
    if hint is bool:
        return bool, True
    if typing.get_origin(hint) is tuple:  # a comma-separated list; the config parses it
        hint = str
    if hint not in (int, float, str):
        raise TypeError(f"no flag type for {hint!r}")
    if not optional:
        return hint, False

    def or_none(value: str):
        return None if value.lower() == "none" else hint(value)

    or_none.__name__ = f"{hint.__name__} or none"  # argparse names the type in its error
    return or_none, False


def _fields(cls, names: Iterable[str] | None, exclude: Iterable[str]) -> list[dataclasses.Field]:
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((set(names or ()) | set(exclude)) - set(by_name))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    chosen = list(names) if names is not None else list(by_name)
    return [by_name[n] for n in chosen if n not in set(exclude)]


def add_fields(parser: argparse.ArgumentParser, cls, names: Iterable[str] | None = None, *,
               exclude: Iterable[str] = (), required: Iterable[str] = (), rename: Rename | None = None,
               defaults: Mapping | None = None, helps: Mapping | None = None) -> None:
    """Add one flag per field of the dataclass ``cls`` (all of them, or ``names``, less
    ``exclude``). ``defaults`` overrides the defaults shown in the help (and applied by the
    command through :func:`given`), ``helps`` a field's help where the command gives it another
    meaning; ``required`` fields must be given."""
    hints = typing.get_type_hints(cls)
    rename, defaults, required, helps = dict(rename or {}), dict(defaults or {}), set(required), dict(helps or {})
    for f in _fields(cls, names, exclude):
        text = helps.get(f.name, f.metadata.get("help"))
        if not text:
            raise TypeError(f"{cls.__name__}.{f.name} has no help metadata, so it cannot be a flag")
        kind, switch = _flag_type(hints[f.name])
        flag = "--" + rename.get(f.name, f.name).replace("_", "-")
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        if f.name not in required and "default" not in text:
            text = f"{text} (default: {default})"
        extra = {"action": argparse.BooleanOptionalAction} if switch else {"type": kind}
        parser.add_argument(flag, dest=rename.get(f.name, f.name), required=f.name in required, help=text,
                            default=argparse.SUPPRESS, **extra)


def given(args: argparse.Namespace, cls, names: Iterable[str] | None = None, *, exclude: Iterable[str] = (),
          rename: Rename | None = None, defaults: Mapping | None = None) -> dict:
    """The fields of ``cls`` the user set with flags (under their field names), on top of
    ``defaults``: the keyword arguments of ``cls(...)`` that the command line asks for."""
    rename = dict(rename or {})
    values = dict(defaults or {})
    for f in _fields(cls, names, exclude):
        dest = rename.get(f.name, f.name)
        if hasattr(args, dest):
            values[f.name] = getattr(args, dest)
    return values


def defaults_of(cls, names: Iterable[str] | None = None) -> dict:
    """The dataclass defaults of the fields of ``cls`` (all of them, or ``names``)."""
    return {f.name: f.default for f in _fields(cls, names, ()) if f.default is not dataclasses.MISSING}
