"""Instrument (issue 12): re-scores finished ``sleepcore eval knowledge`` runs with the binding metrics.

For each run folder (``<output_dir>/<method>/x<budget>``) it loads the memory of the last sleep's
last checkpoint (its ``dreaming`` stage when it has one) into the suite's wrapped model and
evaluates the last sleep group closed-book with :func:`~sleepcore.tasks.knowledge_eval.evaluate`,
which now reports ``unique_contains``, ``prior_contains``, ``choice_accuracy`` and
``sentence_choice_accuracy`` beside "contains" and the gold log-prob. ``--untrained`` adds the
base and in-context rows. ``--phrasing wake`` asks each fact in its wake phrasing (``questions[1]``, the one that
``wake_questions`` replays and ``paraphrase-oracle`` trains on) instead of the evaluation's
(``questions[0]``): does a row answer the very questions its sleep trained on? ``--teacher``
adds, per run, its last sleep's in-context teacher: the group read in context with the memory
that the run's earlier sleeps left (a teacher that reads with those experts on, as Knowledge
Seeding's did before ``teacher_reads_with_earlier_experts`` existed, is this row). The suite
config (``CONFIG.toml``, as given to ``sleepcore eval knowledge``) must be the runs' own, or one
with the same people and memory shape.

    python bench/binding_rescore.py CONFIG.toml OUT.json [--untrained] [--teacher] [--phrasing wake] RUN_DIR[:label] ...

Prints one JSON line per row and writes them all to ``OUT.json``.
"""

import argparse
import dataclasses
import json
from pathlib import Path

from sleepcore.cli.eval import add_knowledge_arguments, knowledge_config
from sleepcore.models import load_model_or_tiny
from sleepcore.tasks.knowledge_eval import evaluate
from sleepcore.tasks.knowledge_methods import documents_of
from sleepcore.tasks.knowledge_suite import KnowledgeSuite, sleep_groups

KEYS = ("contains", "unique_contains", "unique_count", "prior_contains", "choice_accuracy", "choice_chance",
        "sentence_choice_accuracy", "logp_token", "swapped")
PHRASINGS = {"eval": 0, "wake": 1}


def final_memory(run: Path, sleep: int = -1) -> Path:
    """The memory file of the last checkpoint of the last stage of ``run``'s sleep ``sleep`` (an
    index into its sleeps, in order; default the last)."""
    sleeps = sorted(run.glob("sleep-*"))
    try:
        folder = sleeps[sleep]
    except IndexError:
        raise FileNotFoundError(f"{run} holds {len(sleeps)} sleep-* folders, not sleep {sleep} (a run folder is "
                                f"<output_dir>/<method>/x<budget>)") from None
    stages = sorted(path for path in folder.iterdir() if (path / "LATEST").is_file())
    stage = next((path for path in stages if path.name == "dreaming"), stages[-1])
    return stage / (stage / "LATEST").read_text().strip() / "memory.safetensors"


def asked_in_phrasing(group, phrasing: int):
    """``group`` with each 1-hop question asked in its fact's ``questions[phrasing]``."""
    return dataclasses.replace(group, questions=[
        dataclasses.replace(q, text=group.fact_of(q).questions[phrasing]) for q in group.questions])


def row(label: str, scores: dict) -> dict:
    one_hop = scores["one_hop"]
    return {"row": label, **{key: one_hop[key] for key in KEYS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("output")
    parser.add_argument("runs", nargs="*", help="RUN_DIR or RUN_DIR:label")
    parser.add_argument("--untrained", action="store_true", help="also score the base and in-context rows")
    parser.add_argument("--teacher", action="store_true",
                        help="also score each run's last-sleep teacher (in context, after its earlier sleeps)")
    parser.add_argument("--phrasing", choices=PHRASINGS, default="eval",
                        help="ask each fact as the evaluation does (questions[0]) "
                             "or as the wake questions (questions[1])")
    args = parser.parse_intermixed_args()
    suite_parser = argparse.ArgumentParser()
    add_knowledge_arguments(suite_parser)
    config = knowledge_config(suite_parser.parse_args(["--config", args.config]))
    corpus = [document for group in sleep_groups(config.suite) for document in documents_of(group)]
    model, tokenizer = load_model_or_tiny(config.model, corpus)
    suite = KnowledgeSuite(model, tokenizer, config.suite, Path(args.output).parent, progress=False)
    group, rows = asked_in_phrasing(suite.groups[-1], PHRASINGS[args.phrasing]), []

    def score(label: str, *, in_context: bool = False) -> None:
        rows.append(row(label, evaluate(suite.engine, tokenizer, group, in_context=in_context)))
        print(json.dumps(rows[-1]), flush=True)

    if args.untrained:  # before any load: no expert is active yet
        score("base")
        score("in-context", in_context=True)
    for item in args.runs:
        run, _, label = item.partition(":")
        if args.teacher:
            suite.memory.load(final_memory(Path(run), -2))  # what the earlier sleeps left
            score(f"{label or run}: teacher of the last sleep", in_context=True)
        suite.memory.load(final_memory(Path(run)))  # every expert and mask, as the run left them
        score(label or run)
    Path(args.output).write_text(json.dumps({"config": args.config, "phrasing": args.phrasing, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
