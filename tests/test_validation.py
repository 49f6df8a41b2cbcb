"""sleepcore.validation: each checker accepts good values, returns them, and follows the one rule
(wrong type -> TypeError, bad value -> ValueError, the message starts with the argument's name)."""

import math

import numpy as np
import pytest

from sleepcore import validation


def _raises(error, name, check, *args, **kwargs):
    with pytest.raises(error) as info:
        check(name, *args, **kwargs)
    assert str(info.value).startswith(name), str(info.value)


def test_integer():
    assert validation.integer("count", 3) == 3
    assert type(validation.integer("count", np.int64(7))) is int
    assert validation.integer("count", 0, minimum=0, maximum=0) == 0
    assert validation.integer("count", None, optional=True) is None
    for bad in (True, False, 2.0, "3", None, [1]):
        _raises(TypeError, "count", validation.integer, bad)
    _raises(ValueError, "count", validation.integer, 0, minimum=1)
    _raises(ValueError, "count", validation.integer, 5, maximum=4)
    _raises(ValueError, "count", validation.integer, -1, minimum=0, maximum=3)


def test_number():
    value = validation.number("rate", 2)
    assert value == 2.0 and type(value) is float
    assert validation.number("rate", np.float32(0.5)) == 0.5
    assert validation.number("rate", 0.0, minimum=0.0, maximum=1.0) == 0.0
    assert validation.number("rate", None, optional=True) is None
    for bad in (True, "0.1", None, 1j):
        _raises(TypeError, "rate", validation.number, bad)
    for bad in (math.nan, math.inf, -math.inf):
        _raises(ValueError, "rate", validation.number, bad)
    _raises(ValueError, "rate", validation.number, -0.1, minimum=0.0)
    _raises(ValueError, "rate", validation.number, 1.5, maximum=1.0)
    _raises(ValueError, "rate", validation.number, 0.0, above=0.0)


def test_fraction_and_positive():
    assert validation.fraction("beta", 0) == 0.0 and validation.fraction("beta", 1) == 1.0
    _raises(ValueError, "beta", validation.fraction, 1.01)
    _raises(ValueError, "beta", validation.fraction, -0.01)
    _raises(TypeError, "beta", validation.fraction, True)
    assert validation.positive("lr", 1e-9) == 1e-9
    assert validation.positive("lr", None, optional=True) is None
    _raises(ValueError, "lr", validation.positive, 0)
    _raises(ValueError, "lr", validation.positive, -1.0)
    _raises(TypeError, "lr", validation.positive, False)
    _raises(TypeError, "lr", validation.positive, None)


def test_boolean():
    assert validation.boolean("flag", True) is True and validation.boolean("flag", False) is False
    for bad in (0, 1, "yes", None, np.bool_(True)):
        _raises(TypeError, "flag", validation.boolean, bad)


def test_choice():
    assert validation.choice("mode", "sum", ("sum", "none")) == "sum"
    assert validation.choice("mode", 2, iter((1, 2))) == 2
    _raises(ValueError, "mode", validation.choice, "mean", ("sum", "none"))


def test_instance():
    assert validation.instance("items", [1], list) == [1]
    assert validation.instance("items", (1,), (list, tuple)) == (1,)
    _raises(TypeError, "items", validation.instance, "abc", (list, tuple))
    with pytest.raises(TypeError, match="^hook must be callable, got 3$"):
        validation.instance("hook", 3, type(len), what="callable")


def test_text_and_texts():
    assert validation.text("name", "x") == "x"
    assert validation.text("name", " ", empty=True) == " "
    _raises(TypeError, "name", validation.text, b"x")
    _raises(TypeError, "name", validation.text, None)
    _raises(ValueError, "name", validation.text, "  ")
    assert validation.texts("names", ("a", "b")) == ["a", "b"]
    assert validation.texts("names", ["a", ""], empty_items=True) == ["a", ""]
    _raises(TypeError, "names", validation.texts, "ab")
    _raises(TypeError, "names", validation.texts, {"a"})
    _raises(ValueError, "names", validation.texts, [])
    _raises(TypeError, "names[1]", lambda name, values: validation.texts("names", values), ["a", 3])
    _raises(ValueError, "names[0]", lambda name, values: validation.texts("names", values), [" "])


def test_non_empty():
    validation.non_empty("rows", [0])
    validation.non_empty("rows", "x")
    _raises(ValueError, "rows", validation.non_empty, [])
    _raises(ValueError, "rows", validation.non_empty, {})
