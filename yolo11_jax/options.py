"""Declarative options: each option's type, default, help and check live in one place.

A configuration is a dataclass whose fields are declared with :func:`option`. From it:

* :func:`add_arguments` builds the argparse options (``--flag-name`` per field; the type
  comes from the annotation, choices and help from the option; every default is ``None``
  in argparse, so that only what was given on the command line overrides);
* :func:`validate` runs every field's check and reports all problems at once;
* :func:`from_dict` rebuilds a configuration from a saved ``config.json`` (resume), mapping
  renamed keys;
* the README's option tables are generated from the parsers (``tests/_cli_docs.py``).

The training options and the named configurations are in ``train_config.py``; this module is
the machinery only. (It was ``config.py``; that name still imports.)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Optional

Check = Callable[[Any], Optional[str]]  # value -> problem (e.g. "must be >= 1"), or None


def option(default: Any, help: str, *, check: Check | Iterable[Check] | None = None, choices: Iterable | None = None,
           cli: bool = True, metavar: str | None = None, special: Iterable[str] = ()) -> Any:
    """A configuration field: ``default``, ``help`` for ``--help`` and the README, ``check``
    (one or several), ``choices``; ``cli=False`` keeps it off the command line (derived values).
    ``special``: words a numeric option also accepts (``--max-boxes auto``), resolved by the
    program before it runs; the checks see only numbers."""
    checks = () if check is None else (check,) if callable(check) else tuple(check)
    if choices is not None:
        checks = (one_of(*choices),) + checks
    factory = isinstance(default, (list, dict))
    kw = dict(default_factory=lambda: type(default)(default)) if factory else dict(default=default)
    return dataclasses.field(metadata=dict(help=help, checks=checks, choices=tuple(choices) if choices else None,
                                           cli=cli, metavar=metavar, special=tuple(special)), **kw)


# ----------------------------------------------------------------------------- checks

def at_least(low) -> Check:
    return lambda v: None if v is None or v >= low else f"must be >= {low}, got {v}"


def greater_than(low) -> Check:
    return lambda v: None if v is None or v > low else f"must be > {low}, got {v}"


def multiple_of(n: int) -> Check:
    return lambda v: None if v is None or v % n == 0 else f"must be a multiple of {n}, got {v}"


def between(low, high) -> Check:
    return lambda v: None if v is None or low <= v <= high else f"must be in [{low}, {high}], got {v}"


def one_of(*names) -> Check:
    return lambda v: None if v is None or v in names else f"must be one of {', '.join(map(str, names))}, got {v!r}"


# ----------------------------------------------------------------------------- fields

def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation) -> tuple[type, bool]:
    """``(type, optional)`` of a field annotation such as ``int``, ``Optional[str]``, ``float | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])[0], True
    return (origin or annotation), False


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def field_types(cls) -> dict[str, tuple[type, bool]]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def defaults(cls) -> dict[str, Any]:
    """Every field's default value."""
    return {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)}


def add_arguments(parser: argparse.ArgumentParser, cls, *, default_label: str = "default",
                  shown_defaults: Mapping[str, Any] | None = None) -> None:
    """One ``--flag`` per command-line field of ``cls``; help ends with ``(<default_label>: value)``.
    argparse defaults are ``None``: :func:`given` reads back only what the command line set."""
    types_ = field_types(cls)
    shown = {**defaults(cls), **(shown_defaults or {})}
    for f in cli_fields(cls):
        kind, _ = types_[f.name]
        text = f"{f.metadata['help']} ({default_label}: {shown[f.name]})"
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            special = f.metadata.get("special", ())
            parser.add_argument(flag(f.name), type=_with_special(kind, special) if special else kind, default=None,
                                help=text, choices=f.metadata["choices"], metavar=f.metadata["metavar"])


def _with_special(kind: type, words: tuple[str, ...]) -> Callable[[str], Any]:
    """argparse type: one of ``words`` as is, else ``kind(text)``."""
    def parse(text: str):
        return text if text in words else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def given(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if getattr(args, f.name, None) is not None}


def validate(cfg) -> list[str]:
    """Every field's checks: the list of problems, each naming its ``--flag``."""
    problems = []
    types_ = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind, optional = types_[f.name]
        if value is None:
            if not optional:
                problems.append(f"{flag(f.name)} must be given")
            continue
        if value in f.metadata.get("special", ()):
            continue
        if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{flag(f.name)} must be a number, got {value!r}")
            continue
        for check in f.metadata.get("checks", ()):
            problem = check(value)
            if problem:
                problems.append(f"{flag(f.name)} {problem}")
    return problems


def from_dict(cls, values: Mapping[str, Any], *, renamed: Mapping[str, str] | None = None,
              warn: Callable[[str], None] | None = None):
    """``cls(**values)`` for a saved configuration: keys in ``renamed`` (old -> new) are mapped,
    keys ``cls`` does not know are reported through ``warn`` and dropped."""
    renamed = renamed or {}
    known = {f.name for f in dataclasses.fields(cls)}
    out, unknown = {}, []
    for key, value in values.items():
        key = renamed.get(key, key)
        if key in known:
            out[key] = value
        else:
            unknown.append(key)
    if unknown and warn is not None:
        warn(f"ignoring settings this version does not know: {', '.join(sorted(unknown))}")
    return cls(**out)


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
