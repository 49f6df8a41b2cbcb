"""The config loader's ``extends`` key: a TOML file laid over another, table by table."""

from __future__ import annotations

import pytest

from sleepcore.configuration import load_toml, merged


def test_merged_lays_tables_over_tables_and_replaces_everything_else():
    base = {"a": 1, "t": {"x": 1, "y": [1, 2], "u": {"p": 1}}, "keep": {"k": 1}}
    over = {"a": 2, "t": {"y": [3], "u": {"q": 2}}, "new": "n"}
    assert merged(base, over) == {"a": 2, "t": {"x": 1, "y": [3], "u": {"p": 1, "q": 2}}, "keep": {"k": 1},
                                  "new": "n"}
    assert base["t"]["u"] == {"p": 1}  # inputs untouched


def test_a_file_extends_a_relative_file_through_a_chain(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.toml").write_text('model = "m"\n[suite]\nseed = 1\nmethods = ["a", "b"]\n[suite.x]\nlr = 1.0\n')
    (tmp_path / "sub" / "mid.toml").write_text('extends = "../root.toml"\n[suite]\nseed = 2\n')
    (tmp_path / "leaf.toml").write_text('extends = "sub/mid.toml"\n[suite]\nmethods = ["c"]\n[suite.x]\nsteps = 3\n')
    assert load_toml(tmp_path / "leaf.toml") == {"model": "m", "suite": {"seed": 2, "methods": ["c"],
                                                                        "x": {"lr": 1.0, "steps": 3}}}


def test_a_file_extends_the_packaged_demo_settings(tmp_path):
    (tmp_path / "mine.toml").write_text('extends = "sleepcore:cli/demo.toml"\n[suite]\nseed = 7\n')
    loaded = load_toml(tmp_path / "mine.toml")
    assert loaded["suite"]["seed"] == 7 and loaded["suite"]["dreaming"]["rounds"] == 1


@pytest.mark.parametrize("text, match", [
    ('extends = "missing.toml"\n', "missing.toml' does not exist"),
    ("extends = 3\n", "extends in .* must be a file path, got 3"),
    ('extends = "a.toml"\n', "makes a cycle"),
])
def test_bad_extends_raise_clear_errors(tmp_path, text, match):
    (tmp_path / "a.toml").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_toml(tmp_path / "a.toml")


def test_a_two_file_cycle_is_named(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ValueError, match=r"cycle: .*a.toml -> .*b.toml -> .*a.toml"):
        load_toml(tmp_path / "a.toml")
