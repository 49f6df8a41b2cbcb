"""Argument validation shared by every layer (ops, configs, the engine, the tasks).

One rule everywhere: a value of the wrong *type* raises ``TypeError``, a value of the right type
but outside its allowed set raises ``ValueError``, and the message starts with the argument's name
(``"learning_rate must be a finite number > 0, got -1"``). ``bool`` is never accepted as a number.
Each checker returns the value (converted to ``float`` for real numbers) so it can be used inline.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def _describe(value) -> str:
    return repr(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__


def integer(name: str, value, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False) -> int | None:
    """An ``int`` (not a bool) in ``[minimum, maximum]``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {_describe(value)}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int {_range(minimum, maximum)}, got {value!r}")
    return int(value)


def number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, optional: bool = False) -> float | None:
    """A finite real number (not a bool) with ``minimum <= value <= maximum`` and ``value > above``;
    ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {_describe(value)}")
    value = float(value)
    bad = (not math.isfinite(value) or minimum is not None and value < minimum
           or maximum is not None and value > maximum or above is not None and value <= above)
    if bad:
        rule = f"> {above:g}" if above is not None else _range(minimum, maximum)
        raise ValueError(f"{name} must be a finite number {rule}".rstrip() + f", got {value!r}")
    return value


def fraction(name: str, value) -> float:
    """A number in ``[0, 1]``."""
    return number(name, value, minimum=0.0, maximum=1.0)


def positive(name: str, value, *, optional: bool = False) -> float | None:
    """A finite number ``> 0``."""
    return number(name, value, above=0.0, optional=optional)


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return value


def choice(name: str, value, options: Iterable):
    """One of ``options`` (compared with ``==``)."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {_describe(value)}")
    return value


def instance(name: str, value, types, *, what: str | None = None):
    """An instance of ``types``; ``what`` names the expected kind in the message."""
    if not isinstance(value, types):
        expected = what or (" or ".join(t.__name__ for t in types) if isinstance(types, tuple) else types.__name__)
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")
    return value


def text(name: str, value, *, empty: bool = False) -> str:
    """A string (non-blank unless ``empty``)."""
    instance(name, value, str, what="a string")
    if not empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def texts(name: str, values, *, empty_items: bool = False) -> list[str]:
    """A non-empty list or tuple of strings (each non-blank unless ``empty_items``)."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {_describe(values)}")
    if not values:
        raise ValueError(f"{name} must not be empty")
    for index, value in enumerate(values):
        text(f"{name}[{index}]", value, empty=empty_items)
    return list(values)


def non_empty(name: str, values) -> None:
    """A sized collection with at least one item."""
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f">= {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""
