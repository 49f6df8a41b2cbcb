"""Instrument, not a method (issue 12): how often does the extractive answerer give the right value?

Dreaming answers the questions a model writes about a document from the document itself
(``DreamingConfig.answers``). This probe asks the answerers questions whose answers are known: for
the biography people of ``--seeds`` (the knowledge suite's second group, ``--people`` of them),
every phrasing of every fact (``Fact.questions``) plus the question forms the 135M model writes in
its dreams (``MODEL_FORMS``), and counts an answer right when it holds the fact's value
(normalised "contains"), wrong when it holds another value, and counts the questions it declines
(no sentence answers them: the dream item is dropped, which costs nothing). The answerer is
:func:`~sleepcore.sleep.sentence_reader.answering_sentences` then
:func:`~sleepcore.sleep.extractive.answer_span`: with ``--sentence-finder words`` from the words
alone (no model), with ``words_then_model`` the base model (``--model``) reads where the words find
no sentence (``DreamingConfig.sentence_finder``). ``sentence_right`` counts the questions whose found
sentence holds the value, ``right`` those whose span does; both also per attribute.

    python bench/extractive_answer_probe.py OUT.json [--people 10] [--seeds 0,1,2] \
        [--sentence-finder words_then_model] [--model smollm2-135m-instruct]

Prints one line per seed and form; writes the rows and the wrong answers to ``OUT.json``.
"""

import argparse
import contextlib
import json
from collections import Counter

from sleepcore.sleep.dream_config import SENTENCE_FINDERS
from sleepcore.sleep.extractive import answer_span
from sleepcore.sleep.sentence_reader import answering_sentences, reader_for
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.tasks.metrics import normalize_answer

#: Question forms seen in the 135M model's dreams, per attribute ({name}: the person's full name).
MODEL_FORMS = {
    "birth_date": ["When was {name} born?", "What is the date of birth of {name}?"],
    "birth_city": ["Where was {name} born?", "What is the birthplace of {name}?", "In which city was {name} born?"],
    "employer": ["Who does {name} work for?", "Where does {name} work?", "What company does {name} work for?"],
    "university": ["Where did {name} study?", "Which school did {name} attend?"],
    "occupation": ["What does {name} do for a living?", "What is {name}'s job?"],
    "first_pet": ["What was the name of {name}'s first pet?", "What was {name}'s first pet called?"],
    "hobby": ["What does {name} do in their free time?", "What is {name}'s hobby?"],
}


def questions_of(people, passages) -> list[tuple[str, str, str, str]]:
    """``(form, question, document, gold value)``: every phrasing of every fact, then the model's forms."""
    rows = []
    for person, passage in zip(people, passages):
        for fact in person.facts:
            rows += [("phrasing", question, passage, fact.value) for question in fact.questions]
            rows += [("model_form", form.format(name=person.name), passage, fact.value)
                     for form in MODEL_FORMS.get(fact.attribute, [])]
    return rows


def found_answers(rows, reader=None) -> tuple[list[str | None], list[str | None]]:
    """The answering sentence of each row and its answer span (None for both where none is found)."""
    sentences = answering_sentences([row[1] for row in rows], [row[2] for row in rows], reader)
    return sentences, [answer_span(row[1], sentence) if sentence else None for row, sentence in zip(rows, sentences)]


def holds(value: str, text: str | None) -> bool:
    return text is not None and normalize_answer(value) in normalize_answer(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sentence-finder", default="words", choices=SENTENCE_FINDERS)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the reader for words_then_model")
    args = parser.parse_args()
    reader = None
    if args.sentence_finder != "words":
        from sleepcore.models import load_model
        model, tokenizer = load_model(args.model)
        reader = reader_for(args.sentence_finder, model.eval(), tokenizer, contextlib.nullcontext)
    report = {"people": args.people, "sentence_finder": args.sentence_finder, "rows": [], "wrong": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        dataset = generate_biographies(BiographyConfig(num_people=args.people + 1, seed=seed)).subset(args.people, 1)
        attributes = {fact.value: fact.attribute for person in dataset.people for fact in person.facts}
        rows = questions_of(dataset.people, dataset.passages)
        sentences, answers = found_answers(rows, reader)
        for form in ("phrasing", "model_form"):
            picked = [(row, sentence, answer) for row, sentence, answer in zip(rows, sentences, answers)
                      if row[0] == form]
            right = [holds(row[3], answer) for row, _, answer in picked]
            declined = [answer is None for _, _, answer in picked]
            sentence_right = Counter(attributes[row[3]] for row, sentence, _ in picked if holds(row[3], sentence))
            line = {"seed": seed, "form": form, "questions": len(picked), "right": sum(right) / len(picked),
                    "wrong": 1 - (sum(right) + sum(declined)) / len(picked), "declined": sum(declined) / len(picked),
                    "sentence_right": sum(sentence_right.values()),
                    "sentence_right_by_attribute": dict(sorted(sentence_right.items())),
                    "right_by_attribute": dict(sorted(Counter(attributes[row[3]] for (row, _, _), ok
                                                              in zip(picked, right) if ok).items())),
                    "questions_by_attribute": dict(sorted(Counter(attributes[row[3]] for row, _, _ in picked).items()))}
            report["rows"].append(line)
            print(json.dumps(line), flush=True)
            report["wrong"] += [{"seed": seed, "question": row[1], "gold": row[3], "attribute": attributes[row[3]],
                                 "sentence": sentence, "answer": answer}
                                for (row, sentence, answer), ok in zip(picked, right) if not ok]
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
