"""``sleepcore run --config``: a schedule of two sleeps on a tiny model from a TOML file, and the
one-line errors for bad configurations."""

from __future__ import annotations

import json

import pytest

from sleepcore import cli
from sleepcore.cli.run import read_documents
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies

CONFIG = """
output_dir = "{output}"
[model]
name = "tiny"
[documents]
path = "{documents}"
[schedule]
documents_per_sleep = 2
[memory]
rank = 4
slots = 2
[sleep]
seed = 0
[sleep.seeding]
steps = 2
batch_size = 2
max_new_tokens = 6
completions = 2
samples_per_prompt = 1
"""


def write_run(tmp_path, documents_file="docs.jsonl", overrides=None):
    dataset = generate_biographies(BiographyConfig(num_people=4, seed=3))
    documents = tmp_path / documents_file
    documents.write_text("".join(json.dumps({"text": p}) + "\n" for p in dataset.passages))
    text = CONFIG.format(output=tmp_path / "out", documents=documents)
    for old, new in (overrides or {}).items():
        text = text.replace(old, new)
    config = tmp_path / "run.toml"
    config.write_text(text)
    return config


def test_two_sleeps_from_a_toml_config(tmp_path):
    assert cli.main(["run", "--config", str(write_run(tmp_path))]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["documents"] == 4 and [s["slot"] for s in report["sleeps"]] == [0, 1]
    assert (tmp_path / "out" / "memory.safetensors").is_file()
    for sleep in ("sleep-000", "sleep-001"):
        (metrics,) = (tmp_path / "out" / sleep).rglob("metrics.jsonl")
        assert len(metrics.read_text().splitlines()) == 2


@pytest.mark.parametrize("change,message", [
    ({"[sleep]": "[sleep]\nsleepiness = 2"}, "unknown config field(s) sleep.sleepiness"),
    ({"steps = 2": "steps = 2\nlr = 1"}, "unknown config field(s) sleep.seeding.lr"),
    ({"rank = 4": "rank = 4\ncolour = 1"}, "unknown config field(s) memory.colour"),
    ({"[schedule]": "[schedul]"}, "unknown config field(s) schedul"),
    ({"documents_per_sleep = 2": "documents_per_sleep = 0"}, "schedule.documents_per_sleep must be an int >= 1"),
    ({"rank = 4": "rank = 0"}, "memory: rank must be"),
    ({"seed = 0": 'seed = "0"'}, "sleep: seed must be an int"),
    ({'name = "tiny"': 'name = "no/such/model"'}, "no such directory"),
    ({"docs.jsonl": "missing.jsonl"}, "does not exist"),
])
def test_bad_configurations_give_one_clear_line(tmp_path, capsys, change, message):
    assert cli.main(["run", "--config", str(write_run(tmp_path, overrides=change))]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]


def test_empty_document_set_is_refused(tmp_path, capsys):
    config = write_run(tmp_path)
    (tmp_path / "docs.jsonl").write_text("")
    assert cli.main(["run", "--config", str(config)]) == 1
    assert "holds no documents" in capsys.readouterr().err


def test_a_bad_jsonl_line_is_named(tmp_path, capsys):
    config = write_run(tmp_path)
    (tmp_path / "docs.jsonl").write_text('{"text": "one"}\n["two"]\n')
    assert cli.main(["run", "--config", str(config)]) == 1
    assert capsys.readouterr().err.strip() == (f"sleepcore run: {tmp_path / 'docs.jsonl'}:2: each line must be a "
                                               "JSON object with a string 'text'")


def test_documents_are_required(tmp_path, capsys):
    assert cli.main(["run", "--model", "tiny", "--output-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == ("sleepcore run: documents.path is required: a .txt, a .jsonl or a "
                                               "folder of both")


def test_txt_and_folder_documents(tmp_path):
    (tmp_path / "a.txt").write_text("First.\n\n  \n\nSecond.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "Third."}\n\n')
    (tmp_path / "ignored.md").write_text("Not read.")
    assert read_documents(tmp_path) == ["First.", "Second.", "Third."]
    assert read_documents(tmp_path / "a.txt") == ["First.", "Second."]
