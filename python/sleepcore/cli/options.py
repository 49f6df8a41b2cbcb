"""What every command shares: a config dataclass built from ``--config FILE.toml``, explicit flags
and ``--set KEY.PATH=VALUE`` overrides, in that order, through :mod:`sleepcore.configuration`
(unknown keys are refused by their path); and the parsers of list-valued flags."""

from __future__ import annotations

import argparse

from sleepcore.configuration import from_dict, load_toml, with_overrides

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config`` and ``--set`` (``example``: a ``KEY.PATH=VALUE`` of this command)."""
    parser.add_argument("--config", metavar="FILE.toml", help="a TOML file of this command's config (see above); "
                                                              "unknown keys are refused; flags override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help=f"override one config field with a TOML value (e.g. --set {example}); repeatable; "
                             "a bare word is a string")


def describe(what: str, example: str) -> str:
    """A command's ``--help`` description: what it does, then an example of its config file."""
    return f"{what.strip()}\n\nIts config (--config FILE.toml; the flags and --set override it), for example:" \
           f"\n\n{example}"


def configure(args: argparse.Namespace, flags: dict, base):
    """The command's config: ``base``, then the ``--config`` file, then ``flags`` (``{"a.b": value}``;
    ``None`` means not given), then ``--set``.

    ``base`` is a config instance, or a function of (file values, overrides) returning one: for a
    default that depends on a field, such as ``tiny``. ``ValueError``/``TypeError`` name the field.
    """
    values = load_toml(args.config) if args.config else {}
    overrides = {**given(flags), **set_values(args.set)}
    if callable(base):
        base = base(values, overrides)
    return with_overrides(from_dict(type(base), values, base=base), overrides)


def by_tiny(defaults):
    """A ``base`` for :func:`configure`: ``defaults(tiny)``, where ``tiny`` is the top-level field as
    the flags, else the file, set it (False when neither does)."""
    return lambda values, overrides: defaults(overrides.get("tiny", values.get("tiny", False)) is True)


def given(values: dict) -> dict:
    """``values`` without the ``None`` ones (flags not given)."""
    return {key: value for key, value in values.items() if value is not None}


def set_values(pairs: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` as ``{"a.b": 1, "c": "x"}``: each value read as TOML, a bare word as a string."""
    overrides = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--set takes KEY.PATH=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = text.strip()
    return overrides


def integers(flag: str, text: str | None) -> tuple[int, ...] | None:
    """``"1,50"`` as ``(1, 50)``; ``None`` stays ``None``."""
    return _numbers(flag, text, int, "ints")


def floats(flag: str, text: str | None) -> tuple[float, ...] | None:
    """``"1,4,0.5"`` as ``(1.0, 4.0, 0.5)``; ``None`` stays ``None``."""
    return _numbers(flag, text, float, "numbers")


def _numbers(flag: str, text: str | None, kind, what: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {what}, got {text!r}") from None


def names(text: str | None) -> tuple[str, ...] | None:
    """``"base, ks"`` as ``("base", "ks")``; ``None`` stays ``None``."""
    return None if text is None else tuple(part.strip() for part in text.split(","))
