"""``sleepcore dream train``: its documented config loads, unknown keys are refused by path, a tiny
run writes the generator, and ``sleepcore run`` takes ``[sleep.dreaming]`` (with that generator)."""

from __future__ import annotations

import json

import pytest

from sleepcore import cli
from sleepcore.cli.dream import TRAIN_EXAMPLE, DreamTrainConfig, train_config
from sleepcore.sleep.dreams import load_generator
from _sleepers import TINY_DREAMING, tiny_dream_train_config



def write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_documented_example_loads(tmp_path):
    args = cli.build_parser().parse_args(["dream", "train", "--config", write(tmp_path, TRAIN_EXAMPLE)])
    config = train_config(args)
    assert isinstance(config, DreamTrainConfig) and config.tasks.people == 20 and config.dreaming.rounds == 2
    assert config.generator.rank == 16 and config.model.name == "smollm2-135m-instruct"


def test_help_and_bad_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dream", "train", "--help"])
    assert exit_.value.code == 0 and "--config FILE.toml" in capsys.readouterr().out
    assert cli.main(["dream", "train", "--config", write(tmp_path, "[dreaming]\ntop_kk = 1\n")]) == 1
    assert "dreaming.top_kk" in capsys.readouterr().err
    assert cli.main(["dream", "train", "--set", "dreaming.top_k=9"]) == 1
    assert "top_k + random_kept" in capsys.readouterr().err


def test_a_tiny_training_then_a_run_that_dreams_with_its_generator(tmp_path):
    trained = tmp_path / "dreamer"
    config = tiny_dream_train_config(trained)
    assert cli.main(["dream", "train", "--config", write(tmp_path, config)]) == 0
    report = json.loads((trained / "report.json").read_text())
    assert len(report["rounds"]) == 1 and (trained / "metrics.jsonl").read_text().count("\n") == 1
    assert set(load_generator(report["generator"])) == {0, 1}
    documents = tmp_path / "notes.txt"
    documents.write_text("Ada Lovelace was born in London.\n\nAlan Turing worked at Bletchley Park.")
    run = f'output_dir = "{tmp_path / "run"}"\n[model]\nname = "tiny"\n[documents]\npath = "{documents}"\n' \
          f'[memory]\nrank = 4\nslots = 2\n[sleep]\nstages = ["dreaming"]\n' \
          + TINY_DREAMING.replace("[dreaming", "[sleep.dreaming").replace(
              "rounds = 1", f'steps = 2\ngenerator_path = "{report["generator"]}"')
    assert cli.main(["run", "--config", write(tmp_path, run, "run.toml")]) == 0
    sleeps = json.loads((tmp_path / "run" / "report.json").read_text())["sleeps"]
    assert sleeps[0]["stages"]["dreaming"]["steps"] == 2 and sleeps[0]["stages"]["dreaming"]["kept"] == 2
