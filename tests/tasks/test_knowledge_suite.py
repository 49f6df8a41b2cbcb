"""``sleepcore eval knowledge`` on a tiny random model: every method runs the sleeps at one budget
and the report (table, JSON, PNG, targets) holds what the protocol says."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
from safetensors import safe_open

from sleepcore.cli import build_parser, main
from sleepcore.cli.eval import TINY_CONFIG, knowledge_config, run_knowledge_eval
from sleepcore.tasks.general_knowledge import GENERAL_QUESTIONS, kept_share, right_answers
from sleepcore.tasks.knowledge_methods import ROW_SEEDING, TrainedRow
from sleepcore.tasks.knowledge_report import check_targets, format_table, retention_delta
from sleepcore.tasks.knowledge_suite import DEFAULT_METHODS, KnowledgeSuiteConfig, documents_of, sleep_groups


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("eval")
    assert main(["eval", "knowledge", "--tiny", "--output-dir", str(output)]) == 0
    assert (output / "knowledge.png").stat().st_size > 1000
    return json.loads((output / "knowledge.json").read_text())


def test_every_method_and_sleep_is_reported(report):
    assert list(report["results"]) == list(DEFAULT_METHODS)
    assert report["groups"] == list(TINY_CONFIG.sleeps)
    for method, entry in report["results"].items():
        assert len(entry["sleeps"]) == len(TINY_CONFIG.sleeps)
        for sleep, people in zip(entry["sleeps"], TINY_CONFIG.sleeps):
            assert sleep["people"] == people and sleep["one_hop"]["count"] == 7 * people
            assert sleep["two_hop"]["count"] == people
        if method in ("sft", "gkd", "ks"):
            assert len(entry["retention"]) == len(TINY_CONFIG.sleeps) - 1 and entry["drift_kl"] >= 0.0
            assert "general_kept" in entry and (entry["general_kept"] is None or 0 <= entry["general_kept"] <= 1)


def test_trained_methods_meet_the_same_budget(report):
    for index, documents in enumerate(report["documents"]):
        budget = TINY_CONFIG.tokens_per_document * documents
        for method in ("sft", "gkd", "ks"):
            sleep = report["results"][method]["sleeps"][index]
            assert sleep["budget"] == budget and sleep["tokens"] >= budget, (method, sleep)
        for method in ("gkd", "ks"):  # a sleep stops at the first step that reaches the budget
            assert report["results"][method]["sleeps"][index]["steps"] >= 1


def test_rows_differ_only_in_their_knowledge_seeding_settings(tmp_path):
    suite = types.SimpleNamespace(config=TINY_CONFIG)
    seeding = {m: TrainedRow(suite, m, 2.0, tmp_path).sleep_config(500).seeding for m in ("ks", "ks-lti", "gkd")}
    assert seeding["ks"].alpha == TINY_CONFIG.seeding.alpha and seeding["ks"].token_budget == 500
    assert seeding["gkd"] == dataclasses.replace(seeding["ks"], alpha=1.0, on_policy=0.5, beta=0.5)
    assert seeding["ks-lti"] == dataclasses.replace(seeding["ks"], alpha=0.5)
    assert set(ROW_SEEDING) == {"gkd", "ks-lti"}


def test_the_memory_teacher_method_runs(tmp_path):
    assert main(["eval", "knowledge", "--tiny", "--methods", "ks-memory", "--output-dir", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "knowledge.json").read_text())["results"]["ks-memory"]
    assert [sleep["tokens"] >= sleep["budget"] for sleep in entry["sleeps"]] == [True, True]
    assert entry["drift_kl"] >= 0.0


def test_a_gated_router_trains_and_saves_the_sleeps_gates(tmp_path):
    """``router = "gate"`` gates the sleeps' level only: the saved experts carry trained gates."""
    config = dataclasses.replace(TINY_CONFIG, methods=("ks",), router="gate")
    report = run_knowledge_eval("tiny", config, output_dir=tmp_path, progress=False)
    assert report["results"]["ks"]["sleeps"][-1]["tokens"] >= report["results"]["ks"]["sleeps"][-1]["budget"]
    saved = sorted(tmp_path.glob("ks/x*/sleep-001/seeding/step-*/memory.safetensors"))[-1]
    with safe_open(str(saved), "pt") as handle:
        levels = json.loads(handle.metadata()["config"])["levels"]
        gates = [handle.get_tensor(name) for name in handle.keys() if ".levels.1.gate_bias." in name]
    assert [level["router"] for level in levels] == ["sum", "gate"]
    assert gates and any(gate.abs().sum() > 0 for gate in gates)


def test_groups_are_disjoint_people_with_their_companies():
    config = dataclasses.replace(TINY_CONFIG, sleeps=(2, 3))
    first, second = sleep_groups(config)
    assert not {p.name for p in first.people} & {p.name for p in second.people}
    for group in (first, second):
        assert len(documents_of(group)) == len(group.people) + len(group.companies)
        assert {p.attributes["employer"] for p in group.people} == {c.name for c in group.companies}


def _report(em: dict, drift: dict, retention_em=(0.5, 0.5)) -> dict:
    def sleep(value):
        return {"one_hop": {"em": value, "f1": value, "contains": value}, "two_hop": {"em": 0.0, "contains": 0.0},
                "people": 1}
    results = {m: {"sleeps": [sleep(0.5), sleep(v)]} for m, v in em.items()}
    for method, value in drift.items():
        results[method].update(drift_kl=value, retention=[{"group": 0, **sleep(retention_em[1])}])
        results[method]["sleeps"][0] = sleep(retention_em[0])
    return {"groups": [1, 2], "documents": [2, 3], "results": results}


def test_targets_are_ratios_on_the_last_sleep():
    report = _report({"in-context": 0.5, "sft": 0.1, "ks": 0.4}, {"sft": 0.2, "ks": 0.1}, retention_em=(0.6, 0.5))
    checks = {c["target"]: c for c in check_targets(report)}
    assert checks["ks >= 0.7x in-context (EM)"]["ratio"] == pytest.approx(0.8)
    assert checks["ks >= 0.7x in-context (EM)"]["met"] is True
    assert checks["ks >= 2x sft (EM)"]["met"] is True
    assert checks["ks retention within 5 points (em)"]["value"] == pytest.approx(-10.0)
    assert checks["ks retention within 5 points (em)"]["met"] is False
    assert checks["ks drift KL <= sft drift KL"]["met"] is True
    assert retention_delta(report, "ks") == [pytest.approx(-10.0)]
    assert "NOT met" in format_table(report)


def test_a_zero_baseline_makes_a_ratio_target_undefined_not_met():
    report = _report({"in-context": 0.0, "sft": 0.0, "ks": 0.0}, {"sft": 0.1, "ks": 0.3})
    checks = {c["target"]: c for c in check_targets(report)}
    assert checks["ks >= 0.7x in-context (EM)"]["met"] is None
    assert checks["ks drift KL <= sft drift KL"]["met"] is False


@pytest.mark.parametrize("changes, field", [({"sleeps": ()}, "sleeps"), ({"sleeps": (1, 0)}, "sleeps"),
                                            ({"methods": ("ks", "rlhf")}, "methods"),
                                            ({"tokens_per_document": 0}, "tokens_per_document"),
                                            ({"drift_prompts": 99}, "drift_prompts"),
                                            ({"router": "mixture"}, "router")])
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        KnowledgeSuiteConfig(**changes)


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["eval", "knowledge", "--tiny", "--sleeps", "1,x", "--output-dir", str(tmp_path)]) == 1
    assert "--sleeps" in capsys.readouterr().err
    assert main(["eval", "knowledge", "--tiny", "--methods", "ks,foo", "--output-dir", str(tmp_path)]) == 1
    assert "methods" in capsys.readouterr().err
    args = build_parser().parse_args(["eval", "knowledge", "--tiny", "--sleeps", "2", "--methods", "base,ks"])
    assert knowledge_config(args).suite.sleeps == (2,)


def test_general_knowledge_counts_the_base_model_s_right_answers_still_right():
    answers = [f"It is {accepted.split('|')[-1].title()}." for _, accepted in GENERAL_QUESTIONS]
    assert all(right_answers(answers))
    wrong = ["The capital of Shikrais Fopavren"] * len(GENERAL_QUESTIONS)
    assert not any(right_answers(wrong))
    base = [True, True, False, True] + [False] * (len(GENERAL_QUESTIONS) - 4)
    now = [True, False, True, False] + [True] * (len(GENERAL_QUESTIONS) - 4)
    assert kept_share(base, now) == 1 / 3 and kept_share([False] * 3, [True] * 3) is None
    with pytest.raises(ValueError):
        right_answers(answers[:-1])  # one answer per question
