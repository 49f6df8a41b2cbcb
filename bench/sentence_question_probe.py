"""Instrument, not a method (issue 12): how many of a person's facts do Knowledge Seeding's own
sentence questions teach, with their extractive answers?

For the biography passages of ``--people`` people (people 1..N of ``--seed``: the suite's second
group), the untrained model writes ``--questions-per-sentence`` questions about each sentence
through the library's ``sentence_questions`` request (``dream_question_probe.written_questions``:
T 0.5, as :func:`~sleepcore.sleep.replay.replay_prompts` samples it), reading the sentence alone or
the whole passage first (``--writer-contexts``), and the library's filter and span answers
(:func:`~sleepcore.sleep.prompts.sentence_question_prompts`, ``answers="span"``, with and without
``say_relation``) turn them into the fixed-answer items Knowledge Seeding trains on. Per variant:

* ``items``: the items kept;
* ``teaching``: items that name the person and whose answer holds one of the person's fact values;
* ``facts``: the facts (7 per person) some item teaches, the ceiling of what the stage can teach
  (``bench/taught_facts.py`` counts the same on a finished run);
* ``generic``: items whose question says nothing of what it asks ("Who is X?").

    python bench/sentence_question_probe.py OUT.json [--people 10] [--seed 4] [--questions-per-sentence 2,4]
        [--writer-contexts sentence,document]

Prints one JSON line per variant; writes the rows and 12 sample items per variant to ``OUT.json``.
"""

import argparse
import json

from dream_fidelity_probe import untrained_dreamer
from dream_question_probe import written_questions
from sleepcore.sleep.extractive import relation_words
from sleepcore.sleep.prompts import SENTENCE_CONTEXTS, sentence_question_prompts
from taught_facts import facts_taught


def taught(people, prompt) -> set[tuple[str, str]]:
    """The (person, attribute) facts one item teaches: its question names the person (first name)
    and its answer holds the value."""
    return facts_taught([people.people[prompt.document]], prompt.question, prompt.response)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output")
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seed", type=int, default=4, help="biography seed (people 1..N: the suite's second group)")
    parser.add_argument("--questions-per-sentence", default="2", help="comma-separated counts")
    parser.add_argument("--writer-contexts", default="sentence,document", help="comma-separated: sentence, document")
    args = parser.parse_args()
    contexts = args.writer_contexts.split(",")
    for context in contexts:
        if context not in SENTENCE_CONTEXTS:
            parser.error(f"--writer-contexts: each item is one of {SENTENCE_CONTEXTS}, got {context!r}")
    try:
        counts = [int(count) for count in args.questions_per_sentence.split(",")]
    except ValueError:
        counts = [0]
    if any(count < 1 for count in counts):
        parser.error("--questions-per-sentence: each count must be a positive integer, "
                     f"got {args.questions_per_sentence!r}")
    tokenizer, _, engine, people = untrained_dreamer(args.people, args.seed)
    passages, rows, samples = people.passages, [], {}
    for context in contexts:
        for count in counts:
            requests, asked = written_questions(engine, passages, args.seed, count=count, context=context)
            for say_relation in (False, True):
                items = sentence_question_prompts(passages, requests, asked, tokenizer, answers="span",
                                                  say_relation=say_relation)
                facts = [taught(people, item) for item in items]
                row = {"writer_context": context, "questions_per_sentence": count, "say_relation": say_relation,
                       "items": len(items), "teaching": sum(map(bool, facts)), "facts": len(set().union(*facts)),
                       "generic": sum(not relation_words(item.question) for item in items)}
                rows.append(row)
                samples[f"{context} n={count} say_relation={say_relation}"] = [
                    (item.question, item.response, sorted(attribute for _, attribute in fact))
                    for item, fact in zip(items[:12], facts)]
                print(json.dumps(row), flush=True)
    with open(args.output, "w") as file:
        json.dump({"people": args.people, "seed": args.seed, "rows": rows, "samples": samples}, file, indent=1)


if __name__ == "__main__":
    main()
