"""bench/bench_sleep.py: issue 12's shipped config is a valid suite config, and the driver runs it tiny."""

import csv
import importlib.util
import json
from pathlib import Path

from sleepcore.cli import build_parser
from sleepcore.cli.eval import knowledge_config
from sleepcore.tasks.knowledge_dreaming import DREAMING_METHODS

BENCH = Path(__file__).parents[2] / "bench"


def bench_sleep():
    spec = importlib.util.spec_from_file_location("bench_sleep", BENCH / "bench_sleep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dreaming_config_loads_as_an_eval_knowledge_config():
    path = bench_sleep().DREAMING_CONFIG
    config = knowledge_config(build_parser().parse_args(["eval", "knowledge", "--config", str(path)]))
    suite = config.suite
    assert not suite.wake_questions and set(DREAMING_METHODS) <= set(suite.methods)
    assert {"base", "in-context", "ks"} <= set(suite.methods)
    assert suite.dreaming.top_k + suite.dreaming.random_kept <= suite.dreaming.dreams_per_document
    assert all("{document}" in prompt for prompt in suite.dreaming.prompts)


def test_the_driver_runs_the_dreaming_table_tiny(tmp_path, capsys):
    out, table = tmp_path / "run", tmp_path / "sleep.csv"
    bench_sleep().main(["--tiny", "--dreaming", "--sleeps", "1", "--methods", "base,ks,sleep",
                        "--output-dir", str(out), "--csv", str(table)])
    report = json.loads((out / "knowledge.json").read_text())
    assert list(report["results"]) == ["base", "ks", "sleep"]
    rows = list(csv.DictReader(table.open()))
    assert {row["provider"] for row in rows} >= {"base", "ks", "sleep", "sleep-generator"}
    assert "target ks >= base" in capsys.readouterr().out
