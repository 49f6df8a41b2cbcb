"""Instrument, not a method (issue 12): the noise floor of Dreaming's dense reward.

With ``reward_score = "gold_log_prob"`` and ``reward_baseline = "document"`` a dream is rewarded
when the adapter trained on it (plus the document) gives the document's gold answers a higher
log-probability per token than an adapter trained on the document alone. Two adapters trained on
the same document differ too: by their random ``A`` initialisation and the order of their
examples (the inner loop's seed). This probe trains the document-only baseline of every training
person under ``--seeds`` seeds (``Dreamer.base_scores``, the meta-training's own code path) and
reports, per document, the spread (max - min) of its score across seeds, next to the unadapted
model's score, and the same spread per question (what ``reward = "covers"`` compares). A reward
margin (``DreamingConfig.reward_margin``) below that spread rewards seed luck.

    python bench/dream_reward_noise_probe.py OUT.json [--people 12] [--seeds 4] [--objective distill]

The dreaming settings are those of the issue-12 runs (4 dreams, inner lr 1e-2, rank 16, 3 epochs);
``--objective`` is how the inner loop learns (``sft``: next-token training on the document;
``distill``: forward KL to the model reading the document first, the default).
"""

import argparse
import dataclasses
import json
import time

from sleepcore.cli.dream import TaskSource, dream_tasks
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import load_model_or_tiny
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dreamer import Dreamer
from sleepcore.tasks.metrics import contains_match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the JSON report")
    parser.add_argument("--people", type=int, default=12, help="training people (biographies seed 1000)")
    parser.add_argument("--seeds", type=int, default=4, help="baseline seeds per document")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a packaged name, a local folder or 'tiny'")
    parser.add_argument("--objective", default="distill", choices=("sft", "distill"), help="the inner loop's objective")
    args = parser.parse_args()
    started = time.perf_counter()
    tasks, corpus = dream_tasks(TaskSource(seed=1000, people=args.people))
    model, tokenizer = load_model_or_tiny(args.model, corpus)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=16, slots=1),)))
    config = DreamingConfig(dreams_per_document=4, top_k=2, random_kept=1, max_new_tokens=128,
                            inner_learning_rate=1e-2, reward_score="gold_log_prob", reward_baseline="document",
                            objective=args.objective)

    def baselines(dreaming: DreamingConfig, seed: int) -> tuple[list[float], list[list[float]]]:
        return Dreamer(model, tokenizer, memory, dreaming, metric=contains_match, output_dir=f"{args.output}.runs",
                       seed=seed).base_scores(tasks)

    measured = {seed: baselines(config, seed) for seed in range(args.seeds)}
    document = {seed: scores for seed, (scores, _) in measured.items()}
    questions = {seed: per_question for seed, (_, per_question) in measured.items()}
    unadapted = baselines(dataclasses.replace(config, reward_baseline="unadapted"), 0)[0]
    spread = [max(document[s][t] for s in document) - min(document[s][t] for s in document) for t in range(len(tasks))]
    question_spread = [[max(questions[s][t][q] for s in questions) - min(questions[s][t][q] for s in questions)
                        for q in range(len(task.questions))] for t, task in enumerate(tasks)]
    report = {"people": args.people, "seeds": args.seeds, "objective": args.objective, "document": document,
              "unadapted": unadapted, "spread": spread, "questions": questions, "question_spread": question_spread,
              "seconds": time.perf_counter() - started}
    for t, value in enumerate(spread):
        mean = sum(document[s][t] for s in document) / args.seeds
        print(f"document {t:2d}: unadapted {unadapted[t]:7.3f}  document-only {mean:7.3f}  spread over seeds {value:.3f}")
    print(f"spread: min {min(spread):.3f}, mean {sum(spread) / len(spread):.3f}, max {max(spread):.3f}")
    flat = sorted(value for own in question_spread for value in own)
    print(f"per-question spread over {len(flat)} questions: median {flat[len(flat) // 2]:.3f}, "
          f"90th percentile {flat[int(0.9 * (len(flat) - 1))]:.3f}, max {flat[-1]:.3f}")
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
