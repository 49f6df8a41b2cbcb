"""One loader for every configuration: nested dataclasses from TOML tables, with overrides.

Every config in sleepcore is a dataclass that validates itself in ``__post_init__``. This module
turns plain mappings (a TOML file, command-line overrides) into such dataclasses, recursively:

* a field whose type is a dataclass is built from a sub-table;
* a ``tuple[...]`` field accepts a TOML array;
* an unknown key raises ``ValueError`` naming its full path (``"sleep.seeding.lr"``) and the known
  keys at that level, so a typo never passes silently;
* a field's own validation error is re-raised with the table path in front.

``to_dict`` is the inverse (JSON/TOML-ready: tuples become lists).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path


def load_toml(path: str | os.PathLike) -> dict:
    """The TOML file at ``path`` as a dict; ``ValueError`` when it is missing or malformed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def from_dict(cls, values, *, where: str = "", base=None):
    """An instance of dataclass ``cls`` from the mapping ``values``.

    Keys absent from ``values`` keep ``base``'s value (an instance of ``cls``) or the field's
    default. ``where`` is the table path used in error messages.
    """
    if not isinstance(values, dict):
        raise TypeError(f"{where or cls.__name__} must be a table (a mapping of fields), got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(_join(where, key) for key in unknown)
        raise ValueError(f"unknown config field(s) {names}; known at {where or 'top level'}: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    changes = {}
    for name, value in values.items():
        nested = _dataclass_of(hints[name])
        if nested is not None and isinstance(value, dict):
            current = getattr(base, name) if base is not None else None
            value = from_dict(nested, value, where=_join(where, name), base=current)
        elif isinstance(value, list) and _is_tuple(hints[name]):
            value = tuple(value)
        changes[name] = value
    try:
        return dataclasses.replace(base, **changes) if base is not None else cls(**changes)
    except (TypeError, ValueError) as error:
        message = str(error)
        raise type(error)(f"{where}: {message}" if where and not message.startswith(where) else message) from None


def with_overrides(config, overrides: dict):
    """``config`` with dotted-path overrides applied (``{"seeding.steps": 10}``), validated again."""
    nested: dict = {}
    for path, value in overrides.items():
        table = nested
        *parents, leaf = path.split(".")
        for parent in parents:
            table = table.setdefault(parent, {})
        table[leaf] = value
    return from_dict(type(config), nested, base=config)


def to_dict(config) -> dict:
    """A JSON/TOML-ready dict of a (nested) dataclass: tuples become lists."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _dataclass_of(hint):
    """The dataclass type a field holds (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    candidates = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
    return candidates[0] if len(candidates) == 1 else None


def _is_tuple(hint) -> bool:
    return typing.get_origin(hint) is tuple or any(typing.get_origin(arg) is tuple for arg in typing.get_args(hint))
