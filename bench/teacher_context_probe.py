"""How well the in-context teacher answers, by what it reads (issue 11): SmolLM2-135M-Instruct on
the biographies, greedy answers judged by "contains", for the evaluation phrasing and the wake
phrasing of every fact, reading the whole passage, the fact's own sentence (found with the gold
answer: an instrument), or both.

    python bench/teacher_context_probe.py [--people 10] [--seed 0]

Measured 2026-12-02 (10 people, seed 0, 2 threads): evaluation phrasing passage 0.471, sentence
0.643, passage + sentence 0.671; wake phrasing passage 0.529, sentence 0.829, passage + sentence
0.729. About 1 minute per row.
"""

import argparse
import time

from sleepcore.lm import qa_prompt
from sleepcore.models import load_model
from sleepcore.rollout import Engine
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.tasks.knowledge_eval import answer
from sleepcore.tasks.metrics import contains_match
from teacher_ceiling import fact_sentence  # bench/, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, tokenizer = load_model()
    engine = Engine(model, tokenizer)
    dataset = generate_biographies(BiographyConfig(num_people=args.people, seed=args.seed))
    facts = [(fact, passage) for person, passage in zip(dataset.people, dataset.passages) for fact in person.facts]
    contexts = {"passage": lambda f, p: p, "sentence": fact_sentence,
                "passage + sentence": lambda f, p: f"{p}\n\n{fact_sentence(f, p)}"}
    for phrasing, which in (("evaluation", 0), ("wake", 1)):
        for name, context in contexts.items():
            start = time.perf_counter()
            prompts = [qa_prompt(tokenizer, f.questions[which], context(f, p)) for f, p in facts]
            answers = answer(engine, tokenizer, prompts)
            score = sum(contains_match(a, f.value) for a, (f, _) in zip(answers, facts)) / len(facts)
            print(f"{phrasing:10s} phrasing, reads {name:18s} contains {score:.3f}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
