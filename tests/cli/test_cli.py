"""The ``sleepcore`` command line: every command's ``--help``, configs from TOML files with flags and
``--set`` on top, unknown keys refused by path in one line, and the pass-through of ``bench``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sleepcore import cli
from sleepcore.cli import demo, eval as evaluation, run
from sleepcore.cli.demo import DEMO_METHODS, DemoConfig, demo_config
from sleepcore.cli.eval import TINY_CONFIG, EvalKnowledgeConfig, knowledge_config
from sleepcore.cli.run import RunConfig, run_config
from sleepcore.memory import LevelConfig
from sleepcore.models import DEFAULT_MODEL

SUBCOMMANDS = [[name] for name in cli.COMMANDS] + [["eval", suite] for suite in evaluation.SUITES]


def arguments(*argv):
    return cli.build_parser().parse_args(list(argv))


def write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_main_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for name, module in cli.COMMANDS.items():
        assert name in out and module.__doc__.split()[0] in out


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_help_says_what_it_does(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"usage: sleepcore {' '.join(argv)}" in out
    summary = (evaluation.SUITES[argv[1]].description if len(argv) == 2 else cli.COMMANDS[argv[0]].__doc__)
    assert summary.strip().splitlines()[0] in out
    if len(argv) == 2 or hasattr(cli.COMMANDS[argv[0]], "EXAMPLE"):
        assert "--config FILE.toml" in out and "--set KEY.PATH=VALUE" in out


def test_the_console_module_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sleepcore.cli", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout and "eval" in result.stdout


@pytest.mark.parametrize("example,config_of,kind", [
    (demo.EXAMPLE, lambda path: demo_config(arguments("demo", "--config", path)), DemoConfig),
    (run.EXAMPLE, lambda path: run_config(arguments("run", "--config", path)), RunConfig),
    (evaluation.KNOWLEDGE_EXAMPLE, lambda path: knowledge_config(arguments("eval", "knowledge", "--config", path)),
     EvalKnowledgeConfig),
], ids=["demo", "run", "eval knowledge"])
def test_the_documented_examples_load(tmp_path, example, config_of, kind):
    assert isinstance(config_of(write(tmp_path, example)), kind)


def test_the_documented_run_config_loads_its_sections(tmp_path):
    config = run_config(arguments("run", "--config", write(tmp_path, run.EXAMPLE)))
    assert config.output_dir == "runs/biographies" and config.model.name == "smollm2-135m-instruct"
    assert config.documents.path == "notes/" and config.schedule.documents_per_sleep == 20
    assert config.memory == LevelConfig(rank=16, slots=4)
    assert config.sleep.seed == 0 and config.sleep.seeding.steps == 12


@pytest.mark.parametrize("argv,text,path", [
    (["demo"], "peple = 3\n", "peple"),
    (["run"], "[sleep.seeding]\nlr = 1\n", "sleep.seeding.lr"),
    (["eval", "knowledge"], "tiny = true\n[suite]\nsleeps = [1]\n[suite.seeding]\nsteps = 2\nlr = 1\n",
     "suite.seeding.lr"),
], ids=["demo", "run", "eval knowledge"])
def test_an_unknown_key_is_one_line_naming_its_path(tmp_path, capsys, argv, text, path):
    assert cli.main(argv + ["--config", write(tmp_path, text)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"sleepcore {' '.join(argv)}: unknown config field(s) {path};")


def test_demo_flags_override_the_file(tmp_path):
    path = write(tmp_path, 'people = 5\noutput_dir = "from-file"\n')
    config = demo_config(arguments("demo", "--config", path, "--people", "2"))
    assert config == DemoConfig(people=2, output_dir="from-file")
    assert demo_config(arguments("demo", "--config", path, "--set", "people=7")).people == 7


def test_tiny_from_the_file_is_tiny_from_the_flag(tmp_path):
    from_flag = demo_config(arguments("demo", "--tiny"))
    assert from_flag == DemoConfig(tiny=True, people=3, model="tiny")
    assert demo_config(arguments("demo", "--config", write(tmp_path, "tiny = true\n"))) == from_flag
    assert from_flag.suite() == dataclasses.replace(TINY_CONFIG, sleeps=(3,), methods=DEMO_METHODS)
    knowledge = knowledge_config(arguments("eval", "knowledge", "--config", write(tmp_path, "tiny = true\n")))
    assert knowledge == knowledge_config(arguments("eval", "knowledge", "--tiny"))
    assert knowledge == EvalKnowledgeConfig(model="tiny", tiny=True, suite=TINY_CONFIG)
    assert knowledge_config(arguments("eval", "knowledge")) == EvalKnowledgeConfig(DEFAULT_MODEL)


@pytest.mark.parametrize("name", ["issue12-dreaming", "issue12-retention"])
def test_the_shipped_bench_configs_load(name):
    """The configs in ``bench/configs`` load as ``sleepcore eval knowledge`` reads them (every key
    known, every value valid)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "configs" / f"{name}.toml"
    config = knowledge_config(arguments("eval", "knowledge", "--config", str(path)))
    assert config.model == DEFAULT_MODEL and config.suite.dreaming.distinct_questions
    if name == "issue12-retention":
        assert config.suite.sleeps == (5, 10) and config.suite.dreaming.rehearse_draw == "answers"
        assert config.suite.seeding.questions_per_sentence == 8  # extended from issue12-dreaming and the demo
        assert config.suite.dreaming.rehearse_earlier_dreams == 1.0 and config.suite.dreaming.rehearse_earlier_seeding
    seeding = config.suite.seeding  # the demo's generic replay (session 50), extended into both files
    assert "self_instructions" in seeding.prompt_builders and seeding.self_instruction_kind == "questions"
    assert seeding.self_instruction_share == 0.1 and seeding.self_instruction_minimum == 0


def test_eval_flags_override_the_file_over_the_tiny_defaults(tmp_path):
    path = write(tmp_path, "tiny = true\n[suite]\nsleeps = [2, 2]\ntokens_per_document = 10\n")
    config = knowledge_config(arguments("eval", "knowledge", "--config", path, "--sleeps", "1",
                                        "--methods", "base, ks", "--set", "suite.seeding.steps=7"))
    assert config.model == "tiny" and config.suite.sleeps == (1,) and config.suite.methods == ("base", "ks")
    assert config.suite.tokens_per_document == 10 and config.suite.seeding.steps == 7
    assert config.suite.drift_prompts == TINY_CONFIG.drift_prompts
    assert config.suite.seeding.batch_size == TINY_CONFIG.seeding.batch_size


def test_run_flags_override_the_file(tmp_path):
    path = write(tmp_path, '[documents]\npath = "a.txt"\n[schedule]\ndocuments_per_sleep = 2\n[sleep]\nseed = 1\n')
    config = run_config(arguments("run", "--config", path, "--documents-per-sleep", "3", "--documents", "b.txt",
                                  "--set", "sleep.seed=5", "--set", "sleep.seeding.steps=4"))
    assert config.schedule.documents_per_sleep == 3 and config.documents.path == "b.txt"
    assert config.sleep.seed == 5 and config.sleep.seeding.steps == 4
    assert run_config(arguments("run", "--model", "tiny")).model.name == "tiny"


@pytest.mark.parametrize("argv,message", [
    (["demo", "--set", "people"], "sleepcore demo: --set takes KEY.PATH=VALUE, got 'people'"),
    (["demo", "--set", 'people="3"'], "sleepcore demo: people must be an int, got '3'"),
    (["demo", "--people", "0"], "sleepcore demo: people must be an int >= 1, got 0"),
    (["eval", "knowledge", "--set", "suite=3"], "sleepcore eval knowledge: suite must be a KnowledgeSuiteConfig table"),
    (["eval", "knowledge", "--config", "no-such.toml"], "sleepcore eval knowledge: config file 'no-such.toml' does not "
                                                        "exist"),
])
def test_bad_values_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(message)


def test_a_bad_toml_file_is_one_line(tmp_path, capsys):
    assert cli.main(["run", "--config", write(tmp_path, "[model\n")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sleepcore run: config file") and "is not valid TOML" in line


def test_eval_from_a_config_file(tmp_path):
    path = write(tmp_path, f'tiny = true\noutput_dir = "{tmp_path / "out"}"\n[suite]\nsleeps = [1]\n'
                           'methods = ["base"]\n')
    assert cli.main(["eval", "knowledge", "--config", path]) == 0
    report = json.loads((tmp_path / "out" / "knowledge.json").read_text())
    assert report["model"] == "tiny" and list(report["results"]) == ["base"] and report["groups"] == [1]


def test_bench_passes_its_options_through(monkeypatch):
    from sleepcore.benchmarks import distill

    seen = []
    monkeypatch.setattr(distill, "main", seen.append)
    assert cli.main(["bench", "distill", "--shapes", "tiny", "--help"]) == 0
    assert seen == [["--shapes", "tiny", "--help"]]


def test_info_prints_the_build(capsys):
    assert cli.main(["info"]) == 0
    assert "version" in json.loads(capsys.readouterr().out)
