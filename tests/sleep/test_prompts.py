"""Replay prompt builders: entity self-study prompts, per-document quotas and coverage."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext

import pytest

from sleepcore.lm import qa_prompt
from sleepcore.sleep import replay
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.extractive import answer_span, candidate_sentences
from sleepcore.sleep.paraphrases import PARAPHRASE_EXAMPLES, paraphrase_prompts, paraphrase_requests
from sleepcore.sleep.prompts import (SENTENCE_QUESTION_EXAMPLES, ReplayPrompt, entity_prompts, instruction_opening,
                                     named_entities, question_openings,
                                     reader_confirmed, replay_coverage, self_instruction_prompts, round_trip_confirmed, round_trip_requests,
                                     sentence_question_prompts, sentence_question_requests, split_sentences)
from _sleepers import DATASET, make_sleeper, seeding
from _tiny_models import CHATML


def test_named_entities_skip_sentence_openers_and_keep_names():
    text = "She met Ada Quell in Tarvik. The river runs past Tarvik. In spring, Ada Quell sails."
    assert named_entities(text) == ["Ada Quell", "Tarvik"]


def test_entity_prompts_reach_every_fact_of_a_biography():
    passage = DATASET.passages[0]
    prompts = entity_prompts([passage], None, per_document=20)
    name = DATASET.people[0].name
    assert any(name in p.student for p in prompts)
    assert all(passage in p.teacher and passage not in p.student for p in prompts)
    assert replay_coverage([passage], prompts) == 1.0  # every sentence names the person
    assert replay_coverage([passage], []) == 0.0


def test_sentence_questions_keep_questions_about_their_sentence():
    passage = DATASET.passages[0]
    name, sentences = DATASET.people[0].name, split_sentences(passage)
    requests = sentence_question_requests([passage])
    assert [(d, s) for d, s, _ in requests] == [(0, i) for i in range(len(sentences))]
    assert requests[1][2] == SENTENCE_QUESTION_EXAMPLES.format(sentence=sentences[1])
    reading = sentence_question_requests([passage], context="document")  # the writer reads the document first
    assert [(d, s) for d, s, _ in reading] == [(d, s) for d, s, _ in requests]
    assert reading[1][2] == f"Passage: {passage}\n\n" + requests[1][2]
    with pytest.raises(ValueError, match="context"):
        sentence_question_requests([passage], context="paragraph")
    asked = [[f"Where does {name} come from?", "What is the base of the femur?", f"Where does {name} come from?"]]
    asked += [["Why?"]] * (len(requests) - 1)  # too short to be a question
    prompts = sentence_question_prompts([passage], requests, asked)
    assert [(p.student.split("Question: ")[1].split("\n")[0], p.sentence) for p in prompts] == [
        (f"Where does {name} come from?", 0)]  # off-topic and repeated questions are dropped
    assert passage in prompts[0].teacher and passage not in prompts[0].student
    assert replay_coverage([passage], prompts) == pytest.approx(1 / len(sentences))
    focused, = sentence_question_prompts([passage], requests, asked, context="sentence")
    assert focused.student == prompts[0].student and focused.sentence == 0
    assert sentences[0] in focused.teacher and sentences[1] not in focused.teacher  # the sentence alone
    with pytest.raises(ValueError, match="context"):
        sentence_question_prompts([passage], requests, asked, context="paragraph")
    assert prompts[0].response is None  # the teacher samples the answer
    answered, = sentence_question_prompts([passage], requests, asked, answers="sentence")
    assert answered.response == sentences[0] and answered.student == prompts[0].student
    # the short answer: what the sentence says beyond the question; a question it says all of is dropped
    asked[0].append(f"Is it true that {sentences[0][:-1]}?")
    short = sentence_question_prompts([passage], requests, asked, answers="span")
    assert [p.response for p in short] == [answer_span(f"Where does {name} come from?", sentences[0])]
    assert short[0].response.endswith(DATASET.people[0].facts[0].value) and short[0].student == prompts[0].student
    # naming the document's subject (the person): a question asking who owns a value is dropped
    value = DATASET.people[0].facts[0].value
    asked[0] += [f"Who was born on {value}?"]
    assert len(sentence_question_prompts([passage], requests, asked)) == 3
    about = sentence_question_prompts([passage], requests, asked, name_subject=True)
    assert len(about) == 2 and not any("Who was born" in p.student for p in about)
    # saying what it asks: "Who is <name>?" has no relation word, so one fixed answer would be
    # learnt as the answer to every question about the person
    asked[0] += [f"Who is {name}?"]
    every = sentence_question_prompts([passage], requests, asked, answers="span")
    assert f"Who is {name}?" in [p.question for p in every]
    said = sentence_question_prompts([passage], requests, asked, answers="span", say_relation=True)
    assert [p.question for p in said] == [p.question for p in every if p.question != f"Who is {name}?"]
    with pytest.raises(ValueError, match="answers"):
        sentence_question_prompts([passage], requests, asked, answers="gold")



def test_round_trip_keeps_questions_a_reader_of_the_document_answers_with_their_sentence():
    passage, person = DATASET.passages[0], DATASET.people[0]
    sentences = split_sentences(passage)
    requests = sentence_question_requests([passage])
    asked = [[f"What do we know about {person.name}?"]] * len(requests)
    prompts = sentence_question_prompts([passage], requests, asked, answers="span")
    assert [p.question for p in prompts] == [f"What do we know about {person.name}?"] and prompts[0].sentence == 0
    read, = round_trip_requests([passage], prompts)
    assert passage in read and read.endswith(f"Question: {prompts[0].question}\nAnswer:")
    value = person.facts[0].value
    assert value in sentences[0]
    assert round_trip_confirmed([passage], prompts, [f"It is {value}."]) == prompts
    assert round_trip_confirmed([passage], prompts, [person.facts[1].value]) == []
    with pytest.raises(ValueError, match="answers"):
        round_trip_confirmed([passage], prompts, [])


def test_round_trip_asks_the_teacher_greedily_and_drops_what_it_does_not_confirm():
    config = seeding(prompt_builders=("sentence_questions",), prompts_per_document=20, max_new_tokens=4,
                     samples_per_prompt=1)
    config = KnowledgeSeedingConfig(**{**config.__dict__, "max_prompts": None, "sentence_answers": "span",
                                       "round_trip_questions": True})
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages[:2])
    names = [person.name for person in DATASET.people[:2]]
    calls = []

    def text(value):
        return type("Completion", (), {"text": value})()

    def generate(prompts, params, progress=True):
        calls.append((params.n, params.temperature))
        if params.temperature > 0:  # writing questions: one about each sentence's person
            return [type("Output", (), {"completions": [text(f"What about {next(n for n in names if n in p)}?")]
                                        * params.n})() for p in prompts]
        # reading: the first person's reader answers with the first fact, the other's with nothing
        return [type("Output", (), {"completions": [text(DATASET.people[0].facts[0].value if names[0] in p
                                                         else "Nothing.")]})() for p in prompts]

    sleeper.engine.generate = generate
    prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, nullcontext, seed=0)
    assert calls == [(config.questions_per_sentence, 0.5), (1, 0.0)]
    assert [(p.document, p.sentence) for p in prompts] == [(0, 0)]
    assert DATASET.people[0].facts[0].value in prompts[0].response


def test_the_reader_check_keeps_questions_whose_likeliest_sentence_is_the_one_they_were_written_about():
    passage, person = DATASET.passages[0], DATASET.people[0]
    sentences = split_sentences(passage)
    requests = sentence_question_requests([passage])
    asked = [[f"What about {person.name}, part {chr(ord('a') + position)}?"] for _, position, _ in requests]
    prompts = sentence_question_prompts([passage], requests, asked, answers="span")
    assert [p.sentence for p in prompts] == list(range(len(sentences)))
    seen = []

    def reader(requests):  # reads every question as about the document's second sentence
        seen.extend(requests)
        return [candidates.index(sentences[1]) for _, candidates in requests]

    assert [p.sentence for p in reader_confirmed([passage], prompts, reader)] == [1]
    assert [question for question, _ in seen] == [p.question for p in prompts]
    assert all(candidates == candidate_sentences(question, passage) for question, candidates in seen)
    # a sentence that is no candidate (a "when" question about a sentence without a date) is dropped
    # unread, and the only candidate is kept unread
    when = [dataclasses.replace(p, question=f"When was {person.name} born?") for p in prompts]
    own = candidate_sentences(when[0].question, passage)
    assert len(own) == 1
    assert [sentences[p.sentence] for p in reader_confirmed([passage], when, lambda requests: 1 / 0)] == own


def test_the_reader_check_reads_under_the_teacher_in_the_replay_builder():
    config = seeding(prompt_builders=("sentence_questions",), prompts_per_document=20, max_new_tokens=4,
                     samples_per_prompt=1)
    config = KnowledgeSeedingConfig(**{**config.__dict__, "max_prompts": None, "sentence_answers": "span",
                                       "questions_per_sentence": 1, "reader_confirms_questions": True})
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages[:1])
    name, sentences = DATASET.people[0].name, split_sentences(DATASET.passages[0])

    def generate(prompts, params, progress=True):  # one question per sentence, each its own
        return [type("Output", (), {"completions": [type("Completion", (), {"text": f"What about {name}, "
                                                                                  f"part {chr(ord('a') + i)}?"})()]})()
                for i in range(len(prompts))]

    sleeper.engine.generate = generate
    entered, read = [], []

    @contextmanager
    def teacher():
        entered.append(True)
        yield

    original = replay.model_reader

    def spy(model, tokenizer, reading):
        inner = original(model, tokenizer, reading)
        def read_and_record(requests):
            choices = inner(requests)
            read.append([(question, candidates[choice]) for (question, candidates), choice in zip(requests, choices)])
            return choices
        return read_and_record

    replay.model_reader = spy
    try:
        prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, teacher, seed=0)
    finally:
        replay.model_reader = original
    written = [f"What about {name}, part {chr(ord('a') + i)}?" for i in range(len(sentences))]
    assert [[question for question, _ in call] for call in read] == [written]
    assert len(entered) == 2  # written, then read, both as the teacher
    # kept: the questions the model read in the sentence they were written about
    assert sorted(p.question for p in prompts) == [question for question, picked in read[0]
                                                   if picked == sentences[written.index(question)]]


def sentence_replay(**fields) -> tuple[set[str], list]:
    """The questions of a ``sentence_questions``-only replay set of two people's passages, whose
    writer asks, about each sentence, "Who is <person>?" and "Where was <person> born?"; and the
    requests the writer was given."""
    names, requested = [person.name for person in DATASET.people[:2]], []

    def generate(prompts, params, progress=True):
        completion = lambda text: type("Completion", (), {"text": text})()  # noqa: E731
        requested.extend(prompts)
        people = [next(name for name in names if name in prompt) for prompt in prompts]
        return [type("Output", (), {"completions": [completion(f"Who is {name}?"),
                                                    completion(f"Where was {name} born?")]})() for name in people]

    config = seeding(prompt_builders=("sentence_questions",), prompts_per_document=20, max_new_tokens=4,
                     samples_per_prompt=1)
    config = KnowledgeSeedingConfig(**{**config.__dict__, "max_prompts": None, "sentence_answers": "span", **fields})
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages[:2])
    sleeper.engine.generate = generate
    prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, nullcontext, seed=0)
    return {p.question for p in prompts}, requested


def test_questions_say_relation_reaches_the_sentence_question_builder():
    bare = {f"Who is {person.name}?" for person in DATASET.people[:2]}
    every, _ = sentence_replay()
    said, _ = sentence_replay(questions_say_relation=True)
    assert bare <= every and said == every - bare and said


def test_question_writer_context_reaches_the_sentence_question_builder():
    _, alone = sentence_replay()
    _, reading = sentence_replay(question_writer_context="document")
    read = [passage for passage in DATASET.passages[:2] for _ in split_sentences(passage)]  # one per sentence
    assert len(reading) == len(alone) == len(read) and not any(request.startswith("Passage:") for request in alone)
    assert reading == [f"Passage: {passage}\n\n" + plain for passage, plain in zip(read, alone)]


def test_wake_paraphrases_keep_new_questions_about_the_same_person():
    passage, name = DATASET.passages[0], DATASET.people[0].name
    original = f"Who employs {name}?"
    requests = paraphrase_requests([[original, f"Where did {name} study?"], []])
    assert [(d, q) for d, q, _ in requests] == [(0, original), (0, f"Where did {name} study?")]
    assert requests[0][2] == PARAPHRASE_EXAMPLES.format(question=original)
    rewritten = [[f" Which company does {name} work for? Answer: none\nmore", f"who EMPLOYS {name} ?",
                  f"Which company does {name} work for?", f"Who employs {name[:-1]}?", "Who is Tom?",
                  f"{name} works for a company"],
                 [f"At which university did {name} study?"]]
    prompts = paraphrase_prompts([passage, "unused"], requests, rewritten)
    asked = [p.student.split("Question: ")[1].split("\n")[0] for p in prompts]
    # kept: new questions naming the person, cut at the question mark; dropped: the original (case and
    # spacing ignored), a repeat, a misspelt name, another subject, and a statement
    assert asked == [f"Which company does {name} work for?", f"At which university did {name} study?"]
    assert all(p.builder == "wake_paraphrases" and p.document == 0 for p in prompts)
    assert all(passage in p.teacher and passage not in p.student for p in prompts)


def test_wake_paraphrases_are_sampled_from_the_teacher_for_every_wake_question():
    config = seeding(prompt_builders=("wake_paraphrases",), max_new_tokens=4, samples_per_prompt=1)
    config = KnowledgeSeedingConfig(**{**config.__dict__, "max_prompts": None, "paraphrases_per_question": 2})
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages, questions=[[f"Which fact is number {i}?"] for i in range(3)])
    requested = []

    def generate(prompts, params, progress=True):
        requested.extend(prompts)
        assert params.n == 2
        completion = lambda text: type("Completion", (), {"text": text})()  # noqa: E731
        return [type("Output", (), {"completions": [completion(" Which fact has number 0?"), completion(" Hm.")]})()
                for _ in prompts]

    sleeper.engine.generate = generate
    prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, nullcontext, seed=0)
    assert requested == [PARAPHRASE_EXAMPLES.format(question=f"Which fact is number {i}?") for i in range(3)]
    assert sorted(p.document for p in prompts) == [0, 1, 2] and {p.builder for p in prompts} == {"wake_paraphrases"}


def test_per_document_quota_and_wake_questions_on_top():
    config = seeding(prompt_builders=("continuation", "entity_questions", "sentence_questions", "wake_questions"),
                     prompts_per_document=3, max_new_tokens=4, samples_per_prompt=1)
    config = KnowledgeSeedingConfig(**{**config.__dict__, "max_prompts": None})
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages, questions=[[f"Which fact is number {i}?"] for i in range(3)])
    prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, nullcontext, seed=0)
    for document in range(3):
        mine = [p for p in prompts if p.document == document]
        assert sum(p.builder != "wake_questions" for p in mine) == 3
        assert sum(p.builder == "wake_questions" for p in mine) == 1


def test_bad_replay_options_are_refused():
    with pytest.raises(ValueError, match="prompts_per_document"):
        KnowledgeSeedingConfig(prompts_per_document=0)
    with pytest.raises(ValueError, match="replay_temperature"):
        KnowledgeSeedingConfig(replay_temperature=-0.1)
    with pytest.raises((TypeError, ValueError), match="teacher_reads_with_earlier_experts"):
        KnowledgeSeedingConfig(teacher_reads_with_earlier_experts="yes")
    with pytest.raises(ValueError, match="sentence_context"):
        KnowledgeSeedingConfig(sentence_context="passage")
    with pytest.raises(ValueError, match="question_writer_context"):
        KnowledgeSeedingConfig(question_writer_context="passage")
    with pytest.raises(ValueError, match="sentence_answers"):
        KnowledgeSeedingConfig(sentence_answers="gold")
    with pytest.raises(ValueError, match="questions_per_sentence"):
        KnowledgeSeedingConfig(questions_per_sentence=0)
    with pytest.raises((TypeError, ValueError), match="questions_name_subject"):
        KnowledgeSeedingConfig(questions_name_subject="yes")
    with pytest.raises((TypeError, ValueError), match="questions_say_relation"):
        KnowledgeSeedingConfig(questions_say_relation=1)
    with pytest.raises(ValueError, match="round_trip_questions.*'sentence_questions'"):
        KnowledgeSeedingConfig(round_trip_questions=True, prompt_builders=("entity_questions",))
    with pytest.raises(ValueError, match="reader_confirms_questions.*'sentence_questions'"):
        KnowledgeSeedingConfig(reader_confirms_questions=True, prompt_builders=("entity_questions",))
    with pytest.raises((TypeError, ValueError), match="reader_confirms_questions"):
        KnowledgeSeedingConfig(reader_confirms_questions="yes")
    with pytest.raises(ValueError, match="hard_label_items"):
        KnowledgeSeedingConfig(hard_label_items="answers")
    with pytest.raises(ValueError, match="paraphrases_per_question"):
        KnowledgeSeedingConfig(paraphrases_per_question=0)
    with pytest.raises(ValueError, match="besides 'rehearsal'"):
        KnowledgeSeedingConfig(prompt_builders=("rehearsal",))
    with pytest.raises(ValueError, match="rehearsal_share"):
        KnowledgeSeedingConfig(rehearsal_share=0.0)
    with pytest.raises(ValueError, match="besides 'rehearsal' and 'self_instructions'"):
        KnowledgeSeedingConfig(prompt_builders=("rehearsal", "self_instructions"))
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="self_instruction_share"):
            KnowledgeSeedingConfig(self_instruction_share=share)
    with pytest.raises(ValueError, match="self_instruction_kind"):
        KnowledgeSeedingConfig(self_instruction_kind="statements")
    with pytest.raises(ValueError, match="self_instruction_minimum"):
        KnowledgeSeedingConfig(self_instruction_minimum=-1)


def chat_tokenizer(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


def test_a_self_instruction_is_a_request_the_model_writes_after_a_user_turn_s_opening():
    sleeper = make_sleeper(seeding())
    plain, chat = sleeper.tokenizer, chat_tokenizer(make_sleeper(seeding()).tokenizer)
    assert instruction_opening(plain) == "Question:"
    assert instruction_opening(chat) == "<|im_start|>user\n"
    written = [" Tell me about cats.\n\nSure, here", "tell me  about CATS.", "Hi there", "",
               "What is the tallest mountain?\nAnswer: Everest", "Name a colour please"]
    asked = self_instruction_prompts(written, chat, 2)  # cut at a blank line; repeats and short ones dropped
    assert [p.student for p in asked] == [chat.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                                   add_generation_prompt=True)
                                          for text in ("Tell me about cats.",
                                                       "What is the tallest mountain?\nAnswer: Everest")]
    assert all(p.teacher == p.student and p.document == -1 and p.builder == "self_instructions" for p in asked)
    asked = self_instruction_prompts(written, plain, 10)  # without a template: the first line, as a question
    assert [p.student for p in asked] == ["Question: Tell me about cats.\nAnswer:",
                                          "Question: What is the tallest mountain?\nAnswer:",
                                          "Question: Name a colour please\nAnswer:"]
    # short-answer questions: written after the question format's opening, cut at the question mark
    assert instruction_opening(plain, "questions") == "Question:"
    assert instruction_opening(chat, "questions") == qa_prompt(chat, "Why?").split(" Why?")[0]
    asked = self_instruction_prompts([" Who wrote Hamlet? And why", "Tell me about cats.", "Who wrote hamlet?",
                                      "Where is Rome?"], chat, 5, "questions")
    assert [p.student for p in asked] == [qa_prompt(chat, "Who wrote Hamlet?"), qa_prompt(chat, "Where is Rome?")]
    with pytest.raises(ValueError, match="kind"):
        instruction_opening(chat, "statements")


@pytest.mark.parametrize("kind", ["requests", "questions", "both"])
def test_self_instructions_are_sampled_from_the_teacher_in_proportion_to_the_sleep_s_prompts(kind):
    config = seeding(prompt_builders=("wake_questions", "self_instructions"), max_new_tokens=4, samples_per_prompt=1,
                     self_instruction_share=0.5, self_instruction_kind=kind)
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages, questions=[[f"Which fact is number {i}?"] for i in range(3)])
    requested, entered = [], []

    def generate(prompts, params, progress=True):
        requested.append((prompts, params.n, params.temperature))
        completion = lambda text: type("Completion", (), {"text": text})()  # noqa: E731
        return [type("Output", (), {"completions": [completion(f"Which topic is number {i}?")
                                                    for i in range(params.n)]})() for _ in prompts]

    @contextmanager
    def teacher():
        entered.append(True)
        yield

    sleeper.engine.generate = generate
    prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, teacher, seed=0)
    kinds = 2 if kind == "both" else 1  # half of ceil(0.5 x 3) prompts of each kind, twice as many written
    assert requested == [(["Question:"] * kinds, 4 // kinds, 1.0)] and entered == [True]  # written as the teacher
    generic = sorted(p.student for p in prompts if p.builder == "self_instructions")
    assert generic == (["Question: Which topic is number 0?\nAnswer:"] * 2 if kind == "both" else
                       ["Question: Which topic is number 0?\nAnswer:", "Question: Which topic is number 1?\nAnswer:"])
    assert sum(p.builder == "wake_questions" for p in prompts) == 3
    config = dataclasses.replace(config, self_instruction_minimum=4)  # a small sleep still gets as many
    requested.clear()
    replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, teacher, seed=0)
    assert requested == [(["Question:"] * kinds, 8 // kinds, 1.0)]


def test_a_sleep_distils_the_teacher_s_answers_to_its_own_requests(monkeypatch):
    config = seeding(alpha=1.0, steps=1, batch_size=2, max_new_tokens=4, samples_per_prompt=1,
                     prompt_builders=("wake_questions", "self_instructions"), self_instruction_share=1.0)
    sleeper = make_sleeper(config)
    seen = []
    real_sample = replay.sample_replay
    monkeypatch.setattr("sleepcore.sleep.knowledge_seeding.sample_replay",
                        lambda tokenizer, engine, prompts, *a, **k: seen.append(prompts)
                        or real_sample(tokenizer, engine, prompts, *a, **k))
    sleeper.wake(DATASET.passages, questions=[[f"What about fact {i}?"] for i in range(3)])
    sleeper.sleep(progress=False)
    reading, recalling = seen  # the prompts that read a document, then the generic requests (no document)
    assert {p.builder for p in reading} == {"wake_questions"}
    assert recalling and {p.builder for p in recalling} == {"self_instructions"} and len(recalling) <= 3


def test_question_openings_are_the_first_words_of_the_sleep_s_questions_most_frequent_first():
    chat = chat_tokenizer(make_sleeper(seeding()).tokenizer)
    asked = [qa_prompt(chat, q) for q in ("Where was Ada born?", "What is Ada's job?", "Where was Bo born?",
                                          "Who?", "What is Bo's pet?", "Where was Cy raised?")]
    prompts = [ReplayPrompt(text, text, 0, "sentence_questions") for text in asked]
    prompts.append(ReplayPrompt("Passage: Ada was born in Oslo.", "Passage: Ada was born in Oslo.", 0, "continuation"))
    assert question_openings(chat, prompts) == ["Where was", "What is"]  # "Who?" has no two words to open with
    assert question_openings(chat, prompts, words=3) == ["Where was Ada", "What is Ada's", "Where was Bo",
                                                         "What is Bo's", "Where was Cy"]


def test_opening_self_instructions_continue_the_sleep_s_question_openings():
    config = seeding(prompt_builders=("wake_questions", "self_instructions"), max_new_tokens=4, samples_per_prompt=1,
                     self_instruction_share=1.0, self_instruction_kind="openings")
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages, questions=[[f"Which fact is number {i}?"] for i in range(2)] + [["Who founded it?"]])
    requested = []

    def generate(prompts, params, progress=True):
        requested.append((prompts, params.n, params.temperature))
        completion = lambda text: type("Completion", (), {"text": text})()  # noqa: E731
        return [type("Output", (), {"completions": [completion(f" continued {i} by {prompt.split()[-1]}?")
                                                    for i in range(params.n)]})() for prompt in prompts]

    sleeper.engine.generate = generate
    prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, nullcontext, seed=0)
    # 3 own prompts -> 3 generic ones, 6 written: 3 continuations of each of the two openings, taken in turn
    assert requested == [(["Question: Which fact", "Question: Who founded"], 3, 1.0)]
    generic = [p.student for p in prompts if p.builder == "self_instructions"]
    assert sorted(generic) == sorted(["Question: Which fact continued 0 by fact?\nAnswer:",
                                      "Question: Who founded continued 0 by founded?\nAnswer:",
                                      "Question: Which fact continued 1 by fact?\nAnswer:"])
