"""Issue 11's instruments in the knowledge suite, on the tiny model: the oracle ceilings, the gold
answers' log-probability, the teachable subset and gap closure, budget curves, per-step history,
and that a sleep raises the gold answers' log-probability."""

from __future__ import annotations

import json

import pytest
import torch

from sleepcore.cli import build_parser, main
from sleepcore.cli.eval import TINY_CONFIG, knowledge_config
from sleepcore.lm import answer_text, end_of_turn, gold_logprobs, qa_examples, qa_prompt
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine
from sleepcore.sleep.buffer import WakeBuffer
from sleepcore.sleep.config import KnowledgeSeedingConfig, NextTokenConfig
from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.sleep.stage import StageContext, run_stage
from sleepcore.tasks.biographies import BiographyConfig, Fact, Question, generate_biographies
from sleepcore.tasks.knowledge_eval import (attribute_values, binding_scores, choice_scores, dominant_value,
                                            error_modes, sentence_choice_scores, swapped_rate)
from sleepcore.tasks.knowledge_methods import documents_of, oracle_examples, wake_questions_of
from sleepcore.tasks.knowledge_metrics import (add_derived, compact_history, gap_closure, logprob_scores, sleep_costs,
                                               teachable)
from sleepcore.tasks.knowledge_report import format_table
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig
from sleepcore.train import OptimizerConfig

ROWS = ("base", "in-context", "sft", "oracle", "paraphrase-oracle")


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    output = tmp_path_factory.mktemp("instruments")
    assert main(["eval", "knowledge", "--tiny", "--methods", ",".join(ROWS), "--budgets", "1,2",
                 "--output-dir", str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def report(output):
    return json.loads((output / "knowledge.json").read_text())


@pytest.fixture(scope="module")
def tiny():
    group = generate_biographies(BiographyConfig(num_people=1, seed=0))
    model, tokenizer = tiny_model(documents_of(group))
    return group, model, tokenizer


def test_the_oracle_rows_run_and_are_reported(report):
    table = format_table(report)
    base = report["results"]["base"]["sleeps"][-1]["one_hop"]  # what needs no binding, under the table
    assert f"contains {base['prior_contains']:.3f}; multiple-choice chance {base['choice_chance']:.3f}" in table
    for method in ("oracle", "paraphrase-oracle"):
        assert method in report["results"]
        for run in report["results"][method]["runs"]:
            assert f"{method:<18}{'x' + format(run['budget'], 'g'):>7}" in table
            for sleep, people in zip(run["sleeps"], TINY_CONFIG.sleeps):
                assert sleep["examples"] == 7 * people and sleep["tokens"] >= sleep["budget"]
                assert sleep["one_hop"]["count"] == 7 * people and sleep["forward_tokens"] == 0


def test_each_budget_is_one_run_from_the_unchanged_model(report, output):
    assert (output / "knowledge_budgets.png").stat().st_size > 1000
    for method in ("sft", "oracle", "paraphrase-oracle"):
        entry = report["results"][method]
        assert [run["budget"] for run in entry["runs"]] == [1.0, 2.0]
        assert entry["budget"] == 2.0 and entry["sleeps"] == entry["runs"][1]["sleeps"] and "history" not in entry
        once, twice = entry["runs"]
        for index, documents in enumerate(report["documents"]):
            assert once["sleeps"][index]["budget"] == TINY_CONFIG.tokens_per_document * documents
            assert twice["sleeps"][index]["budget"] == 2 * once["sleeps"][index]["budget"]
        for run in entry["runs"]:  # the per-step history: one column entry per step, tokens summing to the sleep's
            for sleep, history in zip(run["sleeps"], run["history"]):
                assert len(history["loss"]) == sleep["steps"] and sum(history["tokens"]) == sleep["tokens"]
                assert len(history["seconds"]) == sleep["steps"]


def test_scores_hold_the_gold_log_probability_and_each_answer(report):
    ceiling = report["results"]["in-context"]["sleeps"]
    for entry in report["results"].values():
        for index, sleep in enumerate(entry["sleeps"]):
            one = sleep["one_hop"]
            assert list(one)[0] == "contains" and len(one["contains_each"]) == one["count"]
            assert len(one["answers"]) == one["count"] and all(isinstance(a, str) for a in one["answers"])
            assert one["logp_token"] < 0 and one["logp_answer"] <= one["logp_token"]
            assert one["teachable"]["count"] == sum(ceiling[index]["one_hop"]["contains_each"])
            assert 0 <= one["swapped"] <= 1 - one["contains"] and 0 <= one["dominant_share"] <= 1
            assert one["errors"]["other_person"] == one["swapped"]
            assert one["contains"] + sum(one["errors"].values()) == pytest.approx(1)
            assert (one["dominant"] is None) == (one["dominant_share"] == 0)
            assert 0 <= one["unique_contains"] <= 1 and 0 <= one["prior_contains"] <= 1
            assert 0 <= one["choice_accuracy"] <= 1 and 0 < one["choice_chance"] <= 1
            assert "logp_token" in sleep["two_hop"]


def test_swapped_answers_give_another_persons_value_of_the_same_attribute():
    questions = [Question("Where was A born?", "Tarvik", "A", "birth_city", 1),
                 Question("Where was B born?", "Oslet", "B", "birth_city", 1),
                 Question("Who employs A?", "Quell Press", "A", "employer", 1),
                 Question("Who employs B?", "Oslet Works", "B", "employer", 1)]
    answers = ["A was born in Oslet.", "B was born in Oslet.", "A works in Tarvik.", "Nobody."]
    # 1: B's city for A; 2: right; 3: a city, not an employer; 4: nothing
    assert swapped_rate(answers, questions) == 0.25


def test_error_modes_say_whose_value_a_wrong_answer_holds():
    questions = [Question("Where was A born?", "Tarvik", "A", "birth_city", 1),
                 Question("Where was B born?", "Oslet", "B", "birth_city", 1),
                 Question("Who employs A?", "Quell Press", "A", "employer", 1),
                 Question("Who employs B?", "Oslet Works", "B", "employer", 1),
                 Question("What is A's hobby?", "chess", "A", "hobby", 1)]
    answers = ["A was born in Oslet.",   # B's city: another person's value
               "B was born in Oslet.",   # right
               "A works in Tarvik.",     # A's own city for the employer question
               "Nobody.",                # neither
               "A plays chess."]         # right
    assert error_modes(answers, questions) == {"other_person": 0.2, "other_attribute": 0.2, "other": 0.2}
    # another person's value of the same attribute counts first, even if the answer also holds one of the person's own
    assert error_modes(["Oslet, near Quell Press.", "No idea.", "Tarvik"], questions[:3]) == {
        "other_person": 1 / 3, "other_attribute": 1 / 3, "other": 1 / 3}
    with pytest.raises(ValueError, match="predictions has 1 answers for 2 questions"):
        error_modes(["Oslet"], questions[:2])


def test_the_dominant_value_is_the_gold_answer_the_most_answers_contain():
    questions = [Question("Where was A born?", "Tarvik", "A", "birth_city", 1),
                 Question("Where was B born?", "Oslet", "B", "birth_city", 1),
                 Question("Who employs A?", "Quell Press", "A", "employer", 1),
                 Question("Who employs B?", "Oslet Works", "B", "employer", 1)]
    answers = ["In Oslet.", "Oslet, I think.", "Oslet Works.", "Tarvik"]  # "Oslet Works" holds "Oslet" too
    assert dominant_value(answers, questions) == ("Oslet", 0.75)
    assert dominant_value(["Nobody.", "No idea."] * 2, questions) == (None, 0.0)


BINDING_QUESTIONS = [Question("Where was A born?", "Tarvik", "A", "birth_city", 1),
                     Question("Where was B born?", "Tarvik", "B", "birth_city", 1),
                     Question("Where was C born?", "Oslet", "C", "birth_city", 1),
                     Question("Who employs A?", "Quell Press", "A", "employer", 1),
                     Question("Who employs B?", "Rime Works", "B", "employer", 1),
                     Question("Who employs C?", "Sable Ltd", "C", "employer", 1)]


def test_binding_scores_count_the_answers_a_person_owns_and_what_the_most_common_value_scores():
    assert attribute_values(BINDING_QUESTIONS)[1] == ["Tarvik", "Oslet"]
    assert attribute_values(BINDING_QUESTIONS)[4] == ["Rime Works", "Quell Press", "Sable Ltd"]
    scores = binding_scores([1, 1, 0, 0, 1, 1], BINDING_QUESTIONS)  # Tarvik is A's and B's: not unique
    assert scores["unique_count"] == 4 and scores["unique_contains"] == 0.5  # Oslet 0, employers 0, 1, 1 -> 2 of 4
    # "Tarvik" for every city (2 of 3 right), "Quell Press" (the first of a tie) for every employer (1 of 3)
    assert scores["prior_contains"] == 0.5


def test_choice_accuracy_ranks_the_gold_answer_against_other_people_s_answers(monkeypatch):
    import sleepcore.tasks.knowledge_eval as knowledge_eval
    believed = {"A": "Oslet", "B": "Tarvik", "C": "Oslet", "Who employs A?": "Quell Press",
                "Who employs B?": "Quell Press", "Who employs C?": "Sable Ltd"}
    prompts = [q.text for q in BINDING_QUESTIONS]
    monkeypatch.setattr(knowledge_eval, "qa_examples", lambda tokenizer, ps, answers: list(zip(ps, answers)))

    def logprobs(model, tokenizer, examples):  # the model's favourite value of each question scores -1, others -5
        key = lambda prompt: prompt if prompt.startswith("Who") else prompt.split()[2]  # noqa: E731
        return [[-0.5, -0.5] if believed[key(prompt)] == value else [-5.0] for prompt, value in examples]

    monkeypatch.setattr(knowledge_eval, "gold_logprobs", logprobs)
    gold = [sum(row) for row in logprobs(None, None, [(q.text, q.answer) for q in BINDING_QUESTIONS])]
    scores = choice_scores(None, None, prompts, BINDING_QUESTIONS, gold)
    assert scores["choice_accuracy"] == pytest.approx(4 / 6)  # B, C, A's and C's employers
    assert scores["choice_chance"] == pytest.approx((3 / 2 + 3 / 3) / 6)


def test_sentence_choice_ranks_each_value_said_in_the_gold_answer_s_sentence(monkeypatch):
    import sleepcore.tasks.knowledge_eval as knowledge_eval
    believed = {"A was born in Oslet.", "B was born in Tarvik.", "C was born in Tarvik.",
                "A works for Quell Press.", "B works for Rime Works.", "C works for Rime Works."}
    seen = []
    monkeypatch.setattr(knowledge_eval, "qa_examples", lambda tokenizer, ps, answers: list(zip(ps, answers)))

    def logprobs(model, tokenizer, examples):  # a sentence the model believes scores -1, others -4
        seen.extend(answer for _, answer in examples)
        return [[-0.5, -0.5] if answer in believed else [-4.0] for _, answer in examples]

    monkeypatch.setattr(knowledge_eval, "gold_logprobs", logprobs)
    sentences = [f"{q.person} was born in {q.answer}." if q.attribute == "birth_city" else
                 f"{q.person} works for {q.answer}." for q in BINDING_QUESTIONS]
    scores = sentence_choice_scores(None, None, [q.text for q in BINDING_QUESTIONS], BINDING_QUESTIONS, sentences)
    assert scores["sentence_choice_accuracy"] == pytest.approx(3 / 6)  # B, A's and B's employers
    assert seen[:4] == ["A was born in Tarvik.", "A was born in Oslet.",  # each question's gold first
                        "B was born in Tarvik.", "B was born in Oslet."]


def test_oracle_training_raises_the_gold_answers_log_probability(report):
    base = report["results"]["base"]["sleeps"]
    for run in report["results"]["oracle"]["runs"]:
        for trained, untrained in zip(run["sleeps"], base):
            assert trained["one_hop"]["logp_token"] > untrained["one_hop"]["logp_token"] + 0.05


def test_knowledge_seeding_with_forward_kl_raises_the_gold_log_probability(tiny):
    """A teacher that answers the wake questions from the passage in its context (a tiny random
    model given a teacher expert trained to) seeds a closed-book student: forward KL on the
    teacher's replay of the wake questions raises the student's gold log-probability on them."""
    group, model, tokenizer = tiny
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=8, slots=1, period=32),
                                                              LevelConfig(rank=8, slots=1))))
    try:
        engine = Engine(model, tokenizer, kv_memory_bytes=16 << 20)
        passage, facts = group.passages[0], group.people[0].facts
        reading = qa_examples(tokenizer, [qa_prompt(tokenizer, f.questions[1], passage) for f in facts],
                              [f.value for f in facts])
        closed_book = oracle_examples(tokenizer, group, "paraphrase-oracle")

        def gold():
            return logprob_scores(gold_logprobs(model, tokenizer, closed_book))["logp_token"]

        teacher = memory.new_expert(0)
        sft = NextTokenConfig(steps=30, batch_size=7, optimizer=OptimizerConfig(learning_rate=3e-2))
        run_stage(NextTokenStage(StageContext(model, tokenizer, memory, engine, 0, teacher), sft), reading,
                  progress=False)
        memory.deactivate(0, teacher)
        before = gold()
        student = memory.new_expert(1)
        buffer = WakeBuffer()
        buffer.add(documents_of(group), wake_questions_of(group))
        config = KnowledgeSeedingConfig(alpha=1.0, beta=0.0, on_policy=0.0, prompt_builders=("wake_questions",),
                                        samples_per_prompt=2, max_new_tokens=8, sample_temperature=0.3, steps=20,
                                        batch_size=7, optimizer=OptimizerConfig(learning_rate=1e-2))
        context = StageContext(model, tokenizer, memory, engine, 1, student, teacher_experts=[(0, teacher)])
        summary = run_stage(KnowledgeSeeding(context, config), buffer, progress=False)
        assert summary["kl_after"] < summary["kl_before"]
        assert gold() > before + 0.2
    finally:
        memory.unwrap()


def test_oracle_items_are_the_questions_with_the_answer_as_the_model_writes_it_and_its_end(tiny):
    group, _, tokenizer = tiny
    evaluation, wake = (oracle_examples(tokenizer, group, m) for m in ("oracle", "paraphrase-oracle"))
    expected = qa_examples(tokenizer, [qa_prompt(tokenizer, q.text) for q in group.questions],
                           [q.answer for q in group.questions])
    expected = [(prompt, answer + end_of_turn(tokenizer)) for prompt, answer in expected]  # where the answer ends
    assert evaluation == expected and [a for _, a in wake] == [a for _, a in evaluation]
    assert all(p != q for (p, _), (q, _) in zip(wake, evaluation))
    assert tokenizer.decode(evaluation[0][1]) == " " + group.questions[0].answer + "\n"  # after "...\nAnswer:"
    assert answer_text("<|im_start|>assistant\n", "Meridale") == "Meridale"
    assert answer_text("Answer:", "Meridale") == " Meridale"


def test_sentence_oracle_items_answer_the_wake_questions_with_a_sentence_naming_the_person_first(tiny):
    group, _, tokenizer = tiny
    wake, sentences = (oracle_examples(tokenizer, group, m) for m in ("paraphrase-oracle", "sentence-oracle"))
    assert [p for p, _ in sentences] == [p for p, _ in wake]
    for fact, (_, answer) in zip(group.people[0].facts, sentences):
        said = tokenizer.decode(answer[:-len(end_of_turn(tokenizer))]).strip()
        assert said == fact.answer_sentence and said in fact.sentences
        assert fact.person in said and said.index(fact.person) < said.index(fact.value)
    value_first = Fact("Ann Lee", "birth_city", "Oslo", ("Oslo is where Ann Lee was born.",), ("?", "?"))
    assert value_first.answer_sentence == "Oslo is where Ann Lee was born."  # no sentence names her first


def test_the_gold_log_probability_is_the_full_logits_one(tiny):
    group, model, tokenizer = tiny
    examples = oracle_examples(tokenizer, group, "oracle")
    fused = gold_logprobs(model, tokenizer, examples, batch_size=3)
    with torch.no_grad():
        for (prompt, answer), values in zip(examples, fused):
            logits = model(torch.tensor([prompt + answer])).logits[0].double()
            rows = logits[len(prompt) - 1:-1].log_softmax(-1)
            expected = rows.gather(1, torch.tensor(answer)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(values, dtype=torch.double), expected, atol=1e-4, rtol=1e-4)
    scores = logprob_scores(fused)
    assert scores["logp_token"] == pytest.approx(sum(map(sum, fused)) / sum(map(len, fused)))
    assert scores["logp_answer"] == pytest.approx(sum(sum(v) for v in fused) / len(fused))


def test_gap_closure_and_the_teachable_subset_on_a_synthetic_report():
    def scores(each):
        return {"one_hop": {"contains": sum(each) / len(each), "contains_each": each}}

    report = {"results": {
        "base": {"sleeps": [scores([0, 0, 0, 1])]},
        "in-context": {"sleeps": [scores([1, 1, 0, 1])]},
        "ks": {"sleeps": [scores([1, 0, 1, 1])], "retention": [],
               "runs": [{"sleeps": [scores([0, 0, 1, 0])]}, {"sleeps": [scores([1, 0, 1, 1])]}]}}}
    add_derived(report)
    ks = report["results"]["ks"]
    assert ks["sleeps"][0]["one_hop"]["gap_closure"] == pytest.approx((0.75 - 0.25) / (0.75 - 0.25))
    assert ks["sleeps"][0]["one_hop"]["teachable"] == {"count": 3, "contains": pytest.approx(2 / 3)}
    assert ks["runs"][0]["sleeps"][0]["one_hop"]["gap_closure"] == pytest.approx((0.25 - 0.25) / 0.5)
    assert ks["runs"][0]["sleeps"][0]["one_hop"]["teachable"] == {"count": 3, "contains": 0.0}
    assert report["results"]["in-context"]["sleeps"][0]["one_hop"]["teachable"]["contains"] == 1.0
    assert gap_closure(0.3, 0.2, 0.2) is None and teachable([1, 0], [0, 0]) == {"count": 0, "contains": None}
    with pytest.raises(ValueError, match="length"):
        teachable([1], [1, 0])


def test_costs_count_forward_tokens_where_a_stage_reports_them():
    history = [{"step": 1, "loss": 2.0, "tokens": 10, "forward_tokens": 30, "seconds": 0.5, "stage": "seeding"},
               {"step": 2, "loss": 1.0, "tokens": 12, "reward_std": 0.1, "seconds": 0.4}]
    summary = {"steps": 2, "tokens": 22, "history": history, "prepare_forward_tokens": 100, "kl_before": 1.0}
    costs = sleep_costs(summary, 20, 3.0)
    assert costs == {"tokens": 22, "forward_tokens": 130, "budget": 20, "train_seconds": 3.0, "steps": 2,
                     "kl_before": 1.0}
    assert compact_history(history) == {"step": [1, 2], "loss": [2.0, 1.0], "reward_std": [None, 0.1],
                                        "tokens": [10, 12], "forward_tokens": [30, None], "seconds": [0.5, 0.4]}


def test_budgets_from_the_flag_and_the_config(capsys, tmp_path):
    args = build_parser().parse_args(["eval", "knowledge", "--tiny", "--budgets", "1,4,0.5"])
    assert knowledge_config(args).suite.budgets == (1.0, 4.0, 0.5)
    assert KnowledgeSuiteConfig(budgets=[1, 16]).budgets == (1.0, 16.0)
    for bad in ((), (1, 1), (0,), ("x",)):
        with pytest.raises(ValueError, match="budgets"):
            KnowledgeSuiteConfig(budgets=bad)
    assert main(["eval", "knowledge", "--tiny", "--budgets", "1,x", "--output-dir", str(tmp_path)]) == 1
    assert "--budgets" in capsys.readouterr().err
