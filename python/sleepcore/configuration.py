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


#: The top-level key that makes a TOML file extend another (see :func:`load_toml`).
EXTENDS = "extends"
#: An ``extends`` path starting with it names a file of the installed package.
PACKAGE_PREFIX = "sleepcore:"


def load_toml(path: str | os.PathLike) -> dict:
    """The TOML file at ``path`` as a dict; ``ValueError`` when it is missing or malformed.

    A file may start from another: ``extends = "other.toml"`` (relative to the file's folder, or
    ``"sleepcore:cli/demo.toml"`` for a file shipped in the package) loads that file first and lays
    this one over it, table by table (:func:`merged`: a key this file sets replaces the other's, a
    sub-table merges key by key); the ``extends`` key itself is dropped. Chains are allowed; a cycle
    raises ``ValueError``."""
    return _load_extending(Path(path), ())


def merged(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on it: tables present in both merge recursively, any other key of
    ``over`` replaces ``base``'s (arrays are replaced, not appended). Neither input is changed."""
    result = dict(base)
    for key, value in over.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


def _load_extending(path: Path, chain: tuple[Path, ...]) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    if EXTENDS not in values:
        return values
    parent = values.pop(EXTENDS)
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{EXTENDS} in {str(path)!r} must be a file path, got {parent!r}")
    if parent.startswith(PACKAGE_PREFIX):
        parent_path = Path(__file__).parent / parent[len(PACKAGE_PREFIX):]
    else:
        parent_path = path.parent / parent
    here = path.resolve()
    if parent_path.resolve() in chain + (here,):
        names = " -> ".join(str(p) for p in chain + (here, parent_path.resolve()))
        raise ValueError(f"{EXTENDS} in {str(path)!r} makes a cycle: {names}")
    return merged(_load_extending(parent_path, chain + (here,)), values)


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
