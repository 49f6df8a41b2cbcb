"""Instrument, not a method (issue 12): how often does the extractive answerer give the right value?

Dreaming answers the questions a model writes about a document from the document itself
(``DreamingConfig.answers``). This probe asks the answerers questions whose answers are known: for
the biography people of ``--seeds`` (the knowledge suite's second group, ``--people`` of them),
every phrasing of every fact (``Fact.questions``) plus the question forms the 135M model writes in
its dreams (``MODEL_FORMS``), and counts an answer right when it holds the fact's value
(normalised "contains"), wrong when it holds another value, and counts the questions it declines
(no sentence answers them: the dream item is dropped, which costs nothing). The answerer is
:func:`~sleepcore.sleep.extractive.answering_sentence` then
:func:`~sleepcore.sleep.extractive.answer_span`, from the words alone (no model).

    python bench/extractive_answer_probe.py OUT.json [--people 10] [--seeds 0,1,2]

Prints one line per seed and form; writes the rows and the wrong answers to ``OUT.json``.
"""

import argparse
import json

from sleepcore.sleep.extractive import answer_span, answering_sentence
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


def span_answers(rows) -> list[str | None]:
    answers = []
    for _, question, document, _ in rows:
        sentence = answering_sentence(question, document)
        answers.append(answer_span(question, sentence) if sentence else None)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    report = {"people": args.people, "rows": [], "wrong": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        dataset = generate_biographies(BiographyConfig(num_people=args.people + 1, seed=seed)).subset(args.people, 1)
        attributes = {fact.value: fact.attribute for person in dataset.people for fact in person.facts}
        rows = questions_of(dataset.people, dataset.passages)
        for form in ("phrasing", "model_form"):
            picked = [(row, answer) for row, answer in zip(rows, span_answers(rows)) if row[0] == form]
            right = [answer is not None and normalize_answer(row[3]) in normalize_answer(answer)
                     for row, answer in picked]
            declined = [answer is None for _, answer in picked]
            line = {"seed": seed, "form": form, "questions": len(picked), "right": sum(right) / len(picked),
                    "wrong": 1 - (sum(right) + sum(declined)) / len(picked), "declined": sum(declined) / len(picked)}
            report["rows"].append(line)
            print(json.dumps(line), flush=True)
            report["wrong"] += [{"seed": seed, "question": row[1], "gold": row[3], "attribute": attributes[row[3]],
                                 "answer": answer} for (row, answer), ok in zip(picked, right) if not ok]
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
