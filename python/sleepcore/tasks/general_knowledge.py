"""Common knowledge the base model already has, asked closed-book (issue 12, session 49): a sleep
should leave it alone. The knowledge suite reports, per trained row, the share of the questions the
base model answers right that the slept model still answers right (``general_kept``);
``bench/generic_answers.py`` reads finished runs the same way.

Measured on SmolLM2-135M-Instruct after the shipped Sleep (seed 1, session 45's run): 2 of the
base's 31 right answers kept ("What is the capital of Japan?" -> "The capital of Shikrais
Fopavren"), Knowledge Seeding alone 4, SFT on the passages 4, SEAL 11.
"""

from __future__ import annotations

from sleepcore.lm import qa_prompt
from sleepcore.tasks.knowledge_eval import answer
from sleepcore.tasks.metrics import contains_match

#: (question, accepted answers separated by "|"): common knowledge that no biography holds, most of
#: which SmolLM2-135M-Instruct answers right closed-book; only the base model's right ones count.
GENERAL_QUESTIONS = (
    ("What is the capital of France?", "paris"), ("What is the capital of Japan?", "tokyo"),
    ("What is the capital of Italy?", "rome"), ("What is the capital of Germany?", "berlin"),
    ("What is the capital of Spain?", "madrid"), ("What is the capital of England?", "london"),
    ("What is the capital of Russia?", "moscow"), ("What is the capital of China?", "beijing"),
    ("What is the capital of Egypt?", "cairo"), ("What is the capital of Canada?", "ottawa"),
    ("What is the capital of Australia?", "canberra"), ("Which planet is known as the Red Planet?", "mars"),
    ("What is the largest planet in the solar system?", "jupiter"), ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("Who painted the Mona Lisa?", "vinci"), ("Who developed the theory of relativity?", "einstein"),
    ("What is the chemical symbol for water?", "h2o"), ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("What is the boiling point of water in degrees Celsius?", "100"), ("How many days are in a week?", "7|seven"),
    ("How many legs does a spider have?", "8|eight"), ("What colour is the sky on a clear day?", "blue"),
    ("What is the largest ocean on Earth?", "pacific"), ("What is the longest river in Africa?", "nile"),
    ("On which continent is Brazil?", "south america"), ("What language is spoken in Brazil?", "portuguese"),
    ("What is the tallest mountain in the world?", "everest"), ("What is the currency of the United States?", "dollar"),
    ("What is the main language of Mexico?", "spanish"), ("Which organ pumps blood through the body?", "heart"),
    ("What do bees make?", "honey"), ("What is the opposite of hot?", "cold"),
    ("Which animal is known as the king of the jungle?", "lion"), ("What is the largest mammal?", "whale"),
    ("Who was the first president of the United States?", "washington"),
    ("In which country are the pyramids of Giza?", "egypt"),
)


def general_answers(engine, tokenizer) -> list[str]:
    """Greedy closed-book answers to :data:`GENERAL_QUESTIONS` in the suite's short-answer format
    (:func:`~sleepcore.tasks.knowledge_eval.answer`: its length cap, cut at the first line break)."""
    return answer(engine, tokenizer, [qa_prompt(tokenizer, question) for question, _ in GENERAL_QUESTIONS])


def right_answers(answers: list[str]) -> list[bool]:
    """Whether each answer holds one of its question's accepted answers (``contains_match``)."""
    return [any(contains_match(text, gold) for gold in accepted.split("|"))
            for text, (_, accepted) in zip(answers, GENERAL_QUESTIONS, strict=True)]


def kept_share(base: list[bool], now: list[bool]) -> float | None:
    """The share of ``base``'s right answers that are still right ``now`` (None when base has none)."""
    return sum(b and n for b, n in zip(base, now, strict=True)) / sum(base) if any(base) else None
