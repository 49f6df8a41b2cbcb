"""Instrument, not a method (issue 12): how many of a person's facts do the model's own questions reach?

For the biography passages of ``--people`` people, collects the questions the untrained model
writes about each passage by two routes: Knowledge Seeding's ``sentence_questions`` builder (a
question per sentence after three worked examples, the library's own request and entity filter) and the
dream prompt :data:`~sleepcore.sleep.dream_config.QUESTIONS` through
:func:`~sleepcore.sleep.dreams.write_dreams` (``dreams_per_document`` dreams, questions cut by
:func:`~sleepcore.sleep.dreams.dream_questions`) under each ``--settings`` item. Every question is
then answered greedily by the model reading the passage (the in-context teacher), and scored:

* ``names_person``: the question holds the person's first name;
* ``good``: it names the person and the teacher's answer holds one of the person's fact values;
* ``facts_covered``: the share of all facts (7 per person) that some good question's answer holds,
  a ceiling on what self-study replay from these questions can teach.

    python bench/dream_question_probe.py OUT.json [--people 10] [--seed 1] [--settings 1.0:noise,0.5:noise,0.5]
        [--dreams 4] [--views whole,1,2,rotated] [--config bench/configs/issue12-dreaming.toml]

``--views`` repeats each setting with the dream prompts holding other views of the passage
(:func:`passage_views`: "whole", the library's; N, windows of N consecutive sentences; "rotated",
the passage starting at each sentence in turn), hypotheses the library does not carry (session 37).
``--config`` takes the dream prompts from a suite TOML's
``[suite.dreaming] prompts`` instead of :data:`~sleepcore.sleep.dream_config.QUESTIONS`.

Prints one JSON line per route; writes the rows and sample (question, answer, facts) triples to ``OUT.json``.
"""

import argparse
import dataclasses
import json
import math
import time

from dream_fidelity_probe import untrained_dreamer
from sleepcore.configuration import load_toml
from sleepcore.lm import encode, qa_prompt
from sleepcore.rollout import SamplingParams
from sleepcore.sleep.dream_config import QUESTIONS, DreamingConfig
from sleepcore.sleep.dreams import dream_questions, write_dreams
from sleepcore.sleep.extractive import split_sentences
from sleepcore.sleep.prompts import sentence_question_prompts, sentence_question_requests
from sleepcore.tasks.metrics import normalize_answer

SAMPLES = 12


def written_questions(engine, passages: list[str], seed: int, *, count: int = 2,
                      context: str = "sentence") -> tuple[list, list[list[str]]]:
    """``(requests, asked)``: the ``sentence_questions`` requests of ``passages`` (the writer reading
    ``context``) and ``count`` questions the model writes for each, sampled as
    :func:`~sleepcore.sleep.replay.replay_prompts` samples them (T = 0.5, 24 tokens)."""
    requests = sentence_question_requests(passages, context=context)
    outputs = engine.generate([encode(engine.tokenizer, request) for _, _, request in requests],
                              SamplingParams(n=count, temperature=0.5, max_tokens=24, seed=seed), progress=False)
    return requests, [[completion.text or "" for completion in output.completions] for output in outputs]


def sentence_questions(engine, passages: list[str], seed: int) -> list[tuple[int, str, str]]:
    """``(passage, student prompt, teacher prompt)`` of the ``sentence_questions`` builder as
    :func:`~sleepcore.sleep.replay.replay_prompts` draws it (n = 2, T = 0.5, its entity filter)."""
    requests, asked = written_questions(engine, passages, seed)
    return [(p.document, p.student, p.teacher)
            for p in sentence_question_prompts(passages, requests, asked, engine.tokenizer)]


def dream_items(tokenizer, passages: list[str], dreams) -> list[tuple[int, str, str]]:
    """The same triples for every distinct question of each passage's dreams."""
    return [(index, qa_prompt(tokenizer, question), qa_prompt(tokenizer, question, passages[index]))
            for index, own in enumerate(dreams)
            for question in dict.fromkeys(q for dream in own for q in dream_questions(dream.text))]


def passage_views(passage: str, view: str) -> list[str]:
    """What the dream prompts of ``passage`` hold under ``view``: ``"whole"``, the passage; a number
    N, its sentences in consecutive windows of N; ``"rotated"``, the whole passage once starting at
    each of its sentences (the sentences after it, then those before it)."""
    sentences = split_sentences(passage)
    if view == "whole":
        return [passage]
    if view == "rotated":
        return [" ".join(sentences[start:] + sentences[:start]) for start in range(len(sentences))]
    size = int(view)
    return [" ".join(sentences[start:start + size]) for start in range(0, len(sentences), size)]


def viewed_dreams(engine, tokenizer, memory, passages: list[str], config: DreamingConfig, view: str):
    """Per passage, ``config.dreams_per_document`` dreams (the library's :func:`write_dreams`), dream k
    from view ``k % views`` of :func:`passage_views` (one view, ``"whole"``: the library's dreams)."""
    views = [passage_views(passage, view) for passage in passages]
    most = math.ceil(config.dreams_per_document / min(len(own) for own in views))
    flat = write_dreams(engine, tokenizer, memory, [text for own in views for text in own],
                        dataclasses.replace(config, dreams_per_document=most, top_k=1, random_kept=0), seed=0)
    dreams, start = [], 0
    for own in views:
        per_view = flat[start:start + len(own)]
        start += len(own)
        dreams.append([per_view[k % len(own)][k // len(own)] for k in range(config.dreams_per_document)])
    return dreams


def coverage(engine, people, items: list[tuple[int, str, str]], name: str) -> tuple[dict, list]:
    """The module docstring's scores of the questions ``items`` (person index, closed-book prompt, the
    prompt after the passage), and sample (question prompt, answer, facts) triples."""
    started = time.perf_counter()
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=48, seed=0)
    outputs = engine.generate([encode(engine.tokenizer, teacher) for _, _, teacher in items], greedy,
                              progress=False) if items else []
    covered, good, named, samples = set(), 0, 0, []
    for (index, student, _), output in zip(items, outputs):
        person, answer = people.people[index], normalize_answer(output.completions[0].text or "")
        names = person.name.split()[0] in student
        facts = sorted(f.attribute for f in person.facts if names and normalize_answer(f.value) in answer)
        named, good = named + names, good + bool(facts)
        covered |= {(index, fact) for fact in facts}
        if len(samples) < SAMPLES:
            samples.append([student, output.completions[0].text, facts])
    total = sum(len(p.facts) for p in people.people)
    row = {"route": name, "questions": len(items), "per_passage": round(len(items) / len(people.people), 1),
           "names_person": round(named / max(1, len(items)), 3), "good": round(good / max(1, len(items)), 3),
           "facts_covered": round(len(covered) / total, 3), "answer_seconds": round(time.perf_counter() - started, 1)}
    return row, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output")
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1, help="biography seed (people 1..N: the suite's second group)")
    parser.add_argument("--dreams", type=int, default=4, help="dreams per passage (QUESTIONS, or --config's prompts)")
    parser.add_argument("--settings", default="1.0:noise,0.5:noise,0.5")
    parser.add_argument("--views", default="whole", help="passage views, comma-separated (see above)")
    parser.add_argument("--config", help="a suite TOML whose [suite.dreaming] prompts the dreams use")
    args = parser.parse_args()
    for view in args.views.split(","):
        if view not in ("whole", "rotated") and not (view.isdigit() and int(view) > 0):
            parser.error(f"--views: each item is 'whole', 'rotated' or a positive sentence count, got {view!r}")
    prompts = tuple(load_toml(args.config)["suite"]["dreaming"]["prompts"]) if args.config else (QUESTIONS,)
    tokenizer, memory, engine, people = untrained_dreamer(args.people, args.seed)
    routes = [("sentence_questions", sentence_questions(engine, people.passages, args.seed))]
    for setting in args.settings.split(","):
        temperature, _, noise = setting.partition(":")
        for view in args.views.split(","):
            config = DreamingConfig(prompts=prompts, dreams_per_document=args.dreams, top_k=1, random_kept=0,
                                    temperature=float(temperature), noise=noise == "noise", max_new_tokens=128)
            dreams = viewed_dreams(engine, tokenizer, memory, people.passages, config, view)
            label = f"window {view}" if view.isdigit() or view == "whole" else view
            routes.append((f"dreams T{temperature}{' noise' if noise else ''} {label}",
                           dream_items(tokenizer, people.passages, dreams)))
    routes.append(("union of all", list(dict.fromkeys(item for _, items in routes for item in items))))
    rows, samples = [], {}
    for name, items in routes:
        row, samples[name] = coverage(engine, people, items, name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(args.output, "w") as file:
        json.dump({"people": args.people, "seed": args.seed, "rows": rows, "samples": samples}, file, indent=1)


if __name__ == "__main__":
    main()
