"""``Dreamer.fit`` (ReST-EM meta-training of the dream generator) on 2 gloo ranks, spawned with
``torchrun --nproc-per-node 2`` on a tiny model (:mod:`_dream_scenarios`), against the same run in
one process:

* the 2-rank run (each rank dreaming about its block of the tasks and training its block of the
  inner-loop chunks) writes the single-process dreams, scores and rewards in every round, and
  trains the single-process generator (within 1e-5); its files are written once, by rank 0;
* a run whose rank 1 is killed in round 1's generator update resumes on 2 ranks from round 1's
  saved dreams to the uninterrupted result;
* ``sleepcore dream train --config`` runs unchanged under torchrun (report and metrics from rank 0,
  a sharded round checkpoint) and gives the single-process rounds and generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from sleepcore import cli
from _dream_scenarios import CONFIG
from _sleepers import tiny_dream_train_config
from _dream_scenarios import main as scenario
from test_torchrun import torchrun

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")

SCENARIO = str(Path(__file__).with_name("_dream_scenarios.py"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The in-process runs on one thread, like each rank (``OMP_NUM_THREADS=1``): on a shared 2-core
    machine two threads made the reference 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    scenario([str(out)])
    return out


def assert_same_run(got, want) -> None:
    """The same rounds (rewards, scores, generator steps; the generator's loss to fp32 rounding), the
    same dreams with the same selection, gradient scores (to rounding), adapted scores and rewards,
    and the same generator within 1e-5."""
    got_result, want_result = (json.loads((path / "result.json").read_text()) for path in (got, want))
    assert got_result["base_scores"] == want_result["base_scores"]
    for got_round, want_round in zip(got_result["rounds"], want_result["rounds"], strict=True):
        assert got_round.pop("generator_loss") == pytest.approx(want_round.pop("generator_loss"), rel=1e-5)
        assert got_round == want_round
    for index in range(CONFIG.rounds):
        got_dreams, want_dreams = (json.loads((path / "run" / f"round-{index:02d}" / "dreams.json").read_text())
                                   for path in (got, want))
        got_records, want_records = (sum(dreams["dreams"], []) for dreams in (got_dreams, want_dreams))
        assert [r.pop("selection_score") for r in got_records] == pytest.approx(
            [r.pop("selection_score") for r in want_records], rel=1e-5)
        assert got_records == want_records
    got_weights, want_weights = (load_file(str(path / "run" / "generator.safetensors")) for path in (got, want))
    assert set(got_weights) == set(want_weights)
    for name, weight in want_weights.items():
        torch.testing.assert_close(got_weights[name], weight, rtol=0, atol=1e-5, msg=name)


def test_dreamer_fit_on_two_ranks_gives_the_single_process_rounds_and_generator(tmp_path, reference):
    rounds = json.loads((reference / "result.json").read_text())["rounds"]
    assert all(0 < r["rewarded"] < r["kept"] and r["generator_steps"] > 0 for r in rounds)  # a test with teeth
    trained = load_file(str(reference / "run" / "generator.safetensors"))
    assert any(name.endswith(".B") and weight.abs().max() > 1e-4 for name, weight in trained.items())
    torchrun(SCENARIO, str(tmp_path))
    assert_same_run(tmp_path, reference)
    work = json.loads((tmp_path / "result.json").read_text())["work"]  # per rank, over the 2 rounds
    assert work == [{"documents": 2, "chunks": 2}, {"documents": 4, "chunks": 4}]
    assert json.loads((reference / "result.json").read_text())["work"] == [{"documents": 6, "chunks": 6}]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]  # written once, by rank 0
    assert not list((tmp_path / "run").rglob(".*tmp*"))  # no temporary file left


def test_a_run_killed_in_a_generator_update_resumes_to_the_same_result(tmp_path, reference):
    killed = torchrun(SCENARIO, str(tmp_path), "--crash-in-round", "1", succeed=False)
    assert killed.returncode != 0
    run = tmp_path / "run"
    assert (run / "rounds" / "LATEST").read_text() == "step-000001"  # round 0 closed ...
    assert (run / "round-01" / "dreams.json").is_file() and not (tmp_path / "result.json").exists()  # ... 1 begun
    saved = (run / "round-01" / "dreams.json").read_text()
    torchrun(SCENARIO, str(tmp_path))
    assert (run / "round-01" / "dreams.json").read_text() == saved  # resumed with the round's dreams
    assert_same_run(tmp_path, reference)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]




def test_sleepcore_dream_train_runs_under_torchrun(tmp_path):
    for name in ("single", "ranks"):
        (tmp_path / f"{name}.toml").write_text(tiny_dream_train_config(tmp_path / name))
    assert cli.main(["dream", "train", "--config", str(tmp_path / "single.toml")]) == 0
    torchrun("-m", "sleepcore.cli", "dream", "train", "--config", str(tmp_path / "ranks.toml"))
    got, want = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("ranks", "single"))
    strip = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]  # noqa: E731
    assert strip(got["rounds"]) == strip(want["rounds"]) and got["base_scores"] == want["base_scores"]
    assert (tmp_path / "ranks" / "metrics.jsonl").read_text().count("\n") == 1  # written once, by rank 0
    assert (tmp_path / "ranks" / "rounds" / "step-000001" / "tensors").is_dir()  # a sharded round checkpoint
    got_weights, want_weights = (load_file(str(tmp_path / name / "generator.safetensors"))
                                 for name in ("ranks", "single"))
    for name, weight in want_weights.items():
        torch.testing.assert_close(got_weights[name], weight, rtol=0, atol=1e-5, msg=name)
