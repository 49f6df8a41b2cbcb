"""Synthetic biography task: determinism, fact coverage, 2-hop separation, serialisation, and answer metrics."""

import pytest

from sleepcore.tasks.biographies import (
    ATTRIBUTES,
    TWO_HOP_ATTRIBUTE,
    BiographyConfig,
    BiographyDataset,
    generate_biographies,
    prompt_for,
)
from sleepcore.tasks.metrics import aggregate, contains_match, exact_match, normalize_answer, token_f1


@pytest.fixture(scope="module")
def dataset():
    return generate_biographies(BiographyConfig(num_people=40, seed=3, paraphrases=4))


def test_same_seed_same_dataset_and_different_seed_differs(dataset):
    assert generate_biographies(BiographyConfig(num_people=40, seed=3, paraphrases=4)) == dataset
    other = generate_biographies(BiographyConfig(num_people=40, seed=4, paraphrases=4))
    assert other.passages != dataset.passages
    assert [p.name for p in other.people] != [p.name for p in dataset.people]


def test_names_are_unique_and_people_have_all_attributes(dataset):
    names = [person.name for person in dataset.people]
    assert len(set(names)) == len(names) == 40
    assert len({company.name for company in dataset.companies}) == len(dataset.companies)
    for person in dataset.people:
        assert tuple(person.attributes) == ATTRIBUTES and len(ATTRIBUTES) >= 6
        assert all(fact.person == person.name and fact.value for fact in person.facts)


def test_every_fact_has_distinct_paraphrases_that_state_it(dataset):
    for person in dataset.people:
        for fact in person.facts:
            assert len(set(fact.sentences)) == len(fact.sentences) == 4
            assert all(fact.value in sentence and person.name in sentence for sentence in fact.sentences)
            assert len(set(fact.questions)) == len(fact.questions) >= 1
            assert all(person.name in question for question in fact.questions)


def test_passage_states_each_fact_once_and_answers_every_question(dataset):
    for person, passage in zip(dataset.people, dataset.passages):
        assert dataset.passage_of(person) == dataset.passage_of(person.name) == passage
        assert sum(fact.sentences[0] in passage for fact in person.facts) == len(person.facts)
        one_hop = [q for q in dataset.questions_of(person) if q.hops == 1]
        assert [q.attribute for q in one_hop] == list(ATTRIBUTES)
        assert all(q.answer in passage for q in one_hop)
        assert [dataset.fact_of(q) for q in one_hop] == list(person.facts)  # each question's own fact
    assert len(dataset.questions) == 40 * len(ATTRIBUTES)
    with pytest.raises(KeyError, match="employer_headquarters"):
        dataset.fact_of(dataset.two_hop_questions[0])


def test_passage_order_is_shuffled_per_person(dataset):
    orders = {tuple(sorted(ATTRIBUTES, key=lambda attribute: dataset.passage_of(person).index(
        next(fact.sentences[0] for fact in person.facts if fact.attribute == attribute))))
        for person in dataset.people}
    assert len(orders) > 1


def test_two_hop_answer_is_only_in_the_company_passage(dataset):
    assert len(dataset.two_hop_questions) == len(dataset.people)
    for person, question in zip(dataset.people, dataset.two_hop_questions):
        assert (question.person, question.hops, question.attribute) == (person.name, 2, TWO_HOP_ATTRIBUTE)
        company = next(c for c in dataset.companies if c.name == person.attributes["employer"])
        assert question.answer == company.headquarters
        assert question.answer in dataset.company_passage_of(person)
        assert person.attributes["employer"] in dataset.company_passage_of(person)
        assert question.answer.lower() not in dataset.passage_of(person).lower()
        assert question in dataset.questions_of(person)


def test_jsonl_round_trip(dataset, tmp_path):
    path = tmp_path / "biographies.jsonl"
    dataset.to_jsonl(path)
    assert BiographyDataset.from_jsonl(path) == dataset


def test_subset_keeps_the_first_people_and_what_they_need(dataset):
    small = dataset.subset(5)
    assert small.people == dataset.people[:5] and small.passages == dataset.passages[:5]
    assert small.questions == dataset.questions[:5 * len(ATTRIBUTES)]
    assert small.two_hop_questions == dataset.two_hop_questions[:5]
    assert {c.name for c in small.companies} == {p.attributes["employer"] for p in small.people}
    for person in small.people:
        assert small.company_passage_of(person) == dataset.company_passage_of(person)
    with pytest.raises(ValueError, match="^n must be"):
        dataset.subset(0)
    with pytest.raises(ValueError, match="^start must be"):
        dataset.subset(1, start=len(dataset.people))
    with pytest.raises(TypeError, match="^n must be"):
        dataset.subset(2.0)
    with pytest.raises(KeyError, match="not in this dataset"):
        small.passage_of(dataset.people[10])


def test_config_validation_names_the_argument():
    cases = [({"num_people": 0}, "num_people", ValueError), ({"paraphrases": 9}, "paraphrases", ValueError),
             ({"seed": 1.5}, "seed", TypeError), ({"num_people": True}, "num_people", TypeError)]
    for kwargs, name, error in cases:
        with pytest.raises(error, match=f"^{name} must"):
            BiographyConfig(**kwargs)
    with pytest.raises(TypeError, match="^config must be"):
        generate_biographies({"num_people": 2})


def test_prompts(dataset):
    question = dataset.questions[0]
    assert prompt_for(question) == f"Question: {question.text}\nAnswer:"
    in_context = prompt_for(question, context=dataset.passages[0])
    assert in_context == f"{dataset.passages[0]}\n\nQuestion: {question.text}\nAnswer:"
    with pytest.raises(ValueError, match="^context"):
        prompt_for(question, context="  ")
    with pytest.raises(TypeError, match="^context"):
        prompt_for(question, context=["a passage"])
    with pytest.raises(TypeError, match="^question"):
        prompt_for(None)


def test_normalize_answer():
    assert normalize_answer("  The Meridale-Institute, of TECHNOLOGY! ") == "meridaleinstitute of technology"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("") == ""
    with pytest.raises(TypeError, match="text"):
        normalize_answer(None)


def test_exact_and_contains_match():
    assert exact_match("The Beshoholt.", "beshoholt") == 1.0
    assert exact_match("Beshoholt, I think", "Beshoholt") == 0.0
    assert contains_match("Beshoholt, I think", "Beshoholt") == 1.0
    assert contains_match("Beshoholtford", "Beshoholt") == 0.0  # whole tokens only
    assert exact_match("", "") == contains_match("", "") == 1.0
    assert exact_match("x", "") == contains_match("x", "") == 0.0
    assert contains_match("", "Beshoholt") == 0.0


def test_token_f1():
    # prediction {meridale, college}, gold {meridale, institute, of, technology}: P = 1/2, R = 1/4.
    assert token_f1("Meridale College", "Meridale Institute of Technology") == pytest.approx(1 / 3)
    assert token_f1("the Meridale College", "Meridale college.") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("a", "Meridale") == 0.0  # "a" normalises to nothing
    assert token_f1("Vopar", "Meridale") == 0.0


def test_aggregate():
    scores = aggregate(["Beshoholt", "Beshoholt city", "Fagriholt"], ["beshoholt", "Beshoholt", "Vopar"])
    assert scores["count"] == 3
    assert scores["em"] == pytest.approx(1 / 3)
    assert scores["contains"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="same length"):
        aggregate(["a"], [])
    with pytest.raises(ValueError, match="empty"):
        aggregate([], [])
