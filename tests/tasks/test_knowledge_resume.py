"""``sleepcore eval knowledge --resume``: finished rows and generators are read back, an interrupted
generator resumes from its ReST-EM rounds and cached final measurement, an unfinished row is rerun,
and a folder holding another config's run is refused by field."""

from __future__ import annotations

import json
import shutil

import pytest

from sleepcore.cli import main
from sleepcore.sleep.dreamer import Dreamer
from sleepcore.tasks.knowledge_methods import TrainedRow
from sleepcore.tasks.knowledge_resume import SuiteResults

ARGS = ["eval", "knowledge", "--tiny", "--sleeps", "1,1", "--methods", "base,sft,sleep"]


def _without_costs(entry):
    """An entry without its wall-clock figures and paths (the only things a rerun in a copy changes)."""
    if isinstance(entry, dict):
        return {k: _without_costs(v) for k, v in entry.items()
                if k not in ("seconds", "train_seconds", "resumed", "path")}
    if isinstance(entry, list):
        return [_without_costs(v) for v in entry]
    return entry


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    output = tmp_path_factory.mktemp("resume")
    assert main(ARGS + ["--output-dir", str(output)]) == 0
    return output, json.loads((output / "knowledge.json").read_text())


def _copy(first, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(first[0], output)
    return output


def test_a_finished_run_resumes_without_training_anything(first, tmp_path):
    output = _copy(first, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished part was redone")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainedRow, "sleep", refuse)
        patch.setattr(Dreamer, "fit", refuse)
        assert main(ARGS + ["--output-dir", str(output), "--resume"]) == 0
    report = json.loads((output / "knowledge.json").read_text())
    assert sorted(report["resumed"]) == ["base", "generators/sleep", "sft/x1", "sleep/x1"]
    assert report["results"] == first[1]["results"]
    assert _without_costs(report["dreaming"]) == _without_costs(first[1]["dreaming"])
    path = report["dreaming"]["generators"]["sleep"]["path"]  # the copy's generator, not the original's
    assert path == str(output / "generators" / "sleep" / "generator.safetensors")


def test_an_interrupted_generator_and_row_resume(first, tmp_path):
    output = _copy(first, tmp_path)
    # stopped before round 0's checkpoint (its dreams, rewards and generator update were saved) ...
    (output / "generators" / "sleep" / "result.json").unlink()
    shutil.rmtree(output / "generators" / "sleep" / "rounds")
    shutil.rmtree(output / "sleep" / "x1" / "sleep-001")  # ... and in the row's second sleep
    (output / "sleep" / "x1" / "result.json").unlink()
    measured = []
    measure = Dreamer.measure

    def recording_measure(self, tasks, base, **kwargs):
        measured.append(kwargs["seed"])
        return measure(self, tasks, base, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Dreamer, "measure", recording_measure)
        assert main(ARGS + ["--output-dir", str(output), "--resume"]) == 0
    report = json.loads((output / "knowledge.json").read_text())
    assert sorted(report["resumed"]) == ["base", "sft/x1"]
    assert measured == []  # round 0 (redone: its checkpoint is gone) and the final one are read from dreams.json
    generator = report["dreaming"]["generators"]["sleep"]
    assert generator["resumed"] is True and first[1]["dreaming"]["generators"]["sleep"]["resumed"] is False
    assert _without_costs(report["dreaming"]) == _without_costs(first[1]["dreaming"])
    assert _without_costs(report["results"]) == _without_costs(first[1]["results"])  # the row, rerun afresh


def test_without_resume_everything_is_redone(first, tmp_path):
    output = _copy(first, tmp_path)
    calls = []
    sleep = TrainedRow.sleep

    def counting_sleep(self, group):
        calls.append(self.method)
        return sleep(self, group)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainedRow, "sleep", counting_sleep)
        assert main(ARGS + ["--output-dir", str(output)]) == 0
    assert calls == ["sft", "sft", "sleep", "sleep"]
    assert "resumed" not in json.loads((output / "knowledge.json").read_text())


def test_resume_refuses_another_config_by_field(first, tmp_path, capsys):
    output = _copy(first, tmp_path)
    assert main(ARGS + ["--output-dir", str(output), "--resume", "--set", "suite.seed=3"]) == 1
    assert "different seed" in capsys.readouterr().err
    assert main(ARGS[:-1] + ["base,sleep", "--output-dir", str(output), "--resume"]) == 0  # methods may change


def test_resume_adds_budget_points(first, tmp_path):
    """``budgets`` may change on resume: the saved multiplier's rows are read back, a new one is run."""
    output = _copy(first, tmp_path)
    assert main(ARGS[:-1] + ["base,sft", "--budgets", "0.5,1", "--output-dir", str(output), "--resume"]) == 0
    report = json.loads((output / "knowledge.json").read_text())
    assert sorted(report["resumed"]) == ["base", "sft/x1"]
    runs = report["results"]["sft"]["runs"]
    assert [run["budget"] for run in runs] == [0.5, 1.0] and (output / "sft" / "x0.5" / "result.json").is_file()
    assert runs[1]["sleeps"] == first[1]["results"]["sft"]["runs"][0]["sleeps"]
    assert runs[0]["sleeps"][0]["budget"] < runs[1]["sleeps"][0]["budget"]


def test_suite_results_cache(tmp_path):
    computed = []
    results = SuiteResults(tmp_path, {"a": (1, 2), "methods": ["x"]}, resume=False)
    assert results.cached("row/x1", lambda: computed.append(1) or {"v": 1.5}) == {"v": 1.5}
    resumed = SuiteResults(tmp_path, {"a": [1, 2], "methods": ["y"]}, resume=True)
    assert resumed.cached("row/x1", lambda: computed.append(2) or {"v": 0.0}) == {"v": 1.5}
    assert computed == [1] and resumed.loaded == ["row/x1"]
    with pytest.raises(ValueError, match="different a, b"):
        SuiteResults(tmp_path, {"a": [1], "b": 0, "methods": ["x"]}, resume=True)
    with pytest.raises(TypeError, match="resume"):
        SuiteResults(tmp_path, {}, resume="yes")


def test_a_field_added_since_the_saved_run_matches_at_its_default(tmp_path):
    """A resumed run's config may hold fields the saved one lacks (options added to the code since,
    off by default): at their defaults they match; set otherwise, or without defaults, they differ,
    named with their path."""
    saved = {"seed": 1, "dreaming": {"top_k": 2}, "methods": ["x"]}
    SuiteResults(tmp_path, saved, resume=False)
    defaults = {"seed": 0, "dreaming": {"top_k": 2, "rewrites": 0}, "methods": []}
    SuiteResults(tmp_path, {**saved, "dreaming": {"top_k": 2, "rewrites": 0}}, resume=True, defaults=defaults)
    SuiteResults(tmp_path, saved, resume=False)
    with pytest.raises(ValueError, match=r"different dreaming\.rewrites\)"):
        SuiteResults(tmp_path, {**saved, "dreaming": {"top_k": 2, "rewrites": 8}}, resume=True, defaults=defaults)
    with pytest.raises(ValueError, match=r"different dreaming\.rewrites"):
        SuiteResults(tmp_path, {**saved, "dreaming": {"top_k": 2, "rewrites": 0}}, resume=True)
    with pytest.raises(ValueError, match=r"different dreaming\.top_k, seed"):
        SuiteResults(tmp_path, {**saved, "seed": 2, "dreaming": {"top_k": 3}}, resume=True, defaults=defaults)
