"""Instrument, not a method (issue 11, row AC of bench/results/issue11): Knowledge Seeding whose
wake-question teacher reads only the fact's own sentence, found with the gold answer, instead of the
whole passage. SmolLM2-135M-Instruct answers the wake phrasing 0.83 from that sentence against 0.53
from the passage (``bench/teacher_context_probe.py``), so this run measures what a far more accurate
teacher buys consolidation at the same budget.

    python bench/teacher_ceiling.py PEOPLE CONFIG.toml SEED

``PEOPLE`` and ``SEED`` must match the suite config's ``sleeps`` (one sleep) and ``seed``; the
config should use ``prompt_builders = ["wake_questions"]``. The replay builder is swapped for the
run (``replay.self_question_prompts``); everything else is ``sleepcore eval knowledge``.
"""

import sys

from sleepcore.cli import main
from sleepcore.lm import qa_prompt
from sleepcore.sleep import replay
from sleepcore.sleep.prompts import ReplayPrompt, split_sentences
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies


def fact_sentence(fact, passage: str) -> str:
    """The sentence of ``passage`` that states ``fact`` (it holds the fact's value verbatim)."""
    return next(sentence for sentence in split_sentences(passage) if fact.value in sentence)


def fact_sentences(people: int, seed: int) -> dict[str, str]:
    """Wake question (each fact's second phrasing) -> the passage sentence that states the fact."""
    dataset = generate_biographies(BiographyConfig(num_people=people, seed=seed))
    return {fact.questions[1]: fact_sentence(fact, passage)
            for person, passage in zip(dataset.people, dataset.passages) for fact in person.facts}


def with_fact_sentence_teacher(sentences: dict[str, str]):
    passage_teacher = replay.self_question_prompts

    def build(documents, questions, tokenizer=None, *, builder="self_question"):
        if builder != "wake_questions":
            return passage_teacher(documents, questions, tokenizer, builder=builder)
        return [ReplayPrompt(qa_prompt(tokenizer, question), qa_prompt(tokenizer, question, sentences[question]),
                             index, builder) for index, asked in enumerate(questions) for question in asked]
    return build


if __name__ == "__main__":
    people, config, seed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    replay.self_question_prompts = with_fact_sentence_teacher(fact_sentences(people, seed))
    sys.exit(main(["eval", "knowledge", "--config", config]))
