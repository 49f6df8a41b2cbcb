"""Evaluation suites (knowledge): `sleepcore eval SUITE --help` describes each.

knowledge: how well base, in-context, SFT, GKD and Knowledge Seeding turn new passages into
closed-book knowledge at the same sleep budgets, beside the oracle ceilings.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from sleepcore import validation
from sleepcore.cli.options import add_config_arguments, by_tiny, configure, describe, floats, integers, names
from sleepcore.models import DEFAULT_MODEL, load_model_or_tiny
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.tasks.knowledge_dreaming import TINY_DREAMING, DreamTraining
from sleepcore.tasks.knowledge_report import format_table, write_report
from sleepcore.tasks.knowledge_suite import KnowledgeSuite, KnowledgeSuiteConfig, documents_of, sleep_groups

#: ``--tiny``: the same protocol on a tiny random model in seconds (for tests).
TINY_CONFIG = KnowledgeSuiteConfig(
    sleeps=(1, 3), tokens_per_document=24, drift_prompts=4, drift_tokens=8, fast_period=32,
    seeding=KnowledgeSeedingConfig(steps=1000, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1,
                                   prompts_per_document=2),
    dreaming=TINY_DREAMING, dream_training=DreamTraining(people=2))

KNOWLEDGE_DESCRIPTION = """\
The knowledge suite (sleepcore.tasks.knowledge_suite): base, in-context, SFT, GKD and Knowledge
Seeding at the same sleep budgets (each trained row once per multiplier of --budgets), beside the
ceilings oracle, paraphrase-oracle and sentence-oracle (SFT on the gold answers), on a packaged
model, a local model folder or (--tiny) a tiny random model. Prints the table (closed-book contains first, gold-answer
log-prob, teachable subset, gap closure, costs) and writes knowledge.json (with per-step history),
knowledge.png and knowledge_budgets.png (contains against trained tokens and seconds). Issue 12's
Dreaming rows (seal, sleep, sleep-no-selection, sleep-no-noise, sleep-no-seeding, dreaming-round0) see
documents only and dream with generators meta-trained once per run (ReST-EM, on training people disjoint from the
evaluated ones); their reward per round is in the table, knowledge.json and knowledge_dreaming.png.
"""

KNOWLEDGE_EXAMPLE = """\
model = "smollm2-135m-instruct"   # a packaged name, a local Hugging Face folder, or "tiny"
output_dir = "sleepcore-eval"     # checkpoints, knowledge.json, knowledge.png
tiny = false                      # true: the tiny random model and the small protocol (TINY_CONFIG)
resume = false                    # true: keep the rows and generators a run of this config finished
[suite]                           # KnowledgeSuiteConfig fields
sleeps = [1, 50]                  # people per sleep, in order
methods = ["base", "in-context", "sft", "gkd", "ks"]  # also ks-lti, ks-memory, the oracles, and
                                  # seal, sleep, sleep-no-selection, sleep-no-noise, sleep-no-seeding,
                                  # dreaming-round0
tokens_per_document = 200         # the sleep budget
budgets = [1.0]                   # multipliers of it: one run of each trained row per multiplier
[suite.seeding]                   # KnowledgeSeedingConfig fields
max_new_tokens = 40
[suite.dreaming]                  # DreamingConfig fields (the Dreaming rows and their generators)
rounds = 2
[suite.dream_training]            # generators' training people (seed 1000) and Sleep's dreaming share
people = 20
share = 0.5
"""


@dataclass
class EvalKnowledgeConfig:
    """What ``sleepcore eval knowledge`` runs: the suite's config on ``model``, written to
    ``output_dir``. ``tiny`` selects the tiny random model and :data:`TINY_CONFIG` as defaults
    (see :func:`knowledge_defaults`); fields given explicitly still override them. ``resume`` reads
    back the rows and generators that an interrupted run of the same suite config finished in
    ``output_dir`` (:mod:`sleepcore.tasks.knowledge_resume`)."""

    model: str = DEFAULT_MODEL
    output_dir: str = "sleepcore-eval"
    tiny: bool = False
    resume: bool = False
    suite: KnowledgeSuiteConfig = field(default_factory=KnowledgeSuiteConfig)

    def __post_init__(self):
        validation.text("model", self.model)
        validation.text("output_dir", self.output_dir)
        validation.boolean("tiny", self.tiny)
        validation.boolean("resume", self.resume)
        validation.instance("suite", self.suite, KnowledgeSuiteConfig, what="a KnowledgeSuiteConfig table")


def knowledge_defaults(tiny: bool) -> EvalKnowledgeConfig:
    """The defaults a config file and flags start from: the tiny ones, or the full suite's."""
    return EvalKnowledgeConfig(model="tiny", tiny=True, suite=TINY_CONFIG) if tiny else EvalKnowledgeConfig()


def run_knowledge_eval(model: str = DEFAULT_MODEL, config: KnowledgeSuiteConfig | None = None, *,
                       output_dir: str | os.PathLike = "sleepcore-eval", progress: bool = True,
                       resume: bool = False) -> dict:
    """Runs the suite on ``model`` ("tiny" for a tiny random model); returns the report. ``resume``:
    keep what a run of the same config finished in ``output_dir`` (see :class:`EvalKnowledgeConfig`)."""
    try:
        import matplotlib  # noqa: F401  (the report's plot: checked before the long run, not after)
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the knowledge report's plot needs matplotlib: pip install matplotlib") from None
    config = config or (TINY_CONFIG if model == "tiny" else KnowledgeSuiteConfig())
    corpus = [document for group in sleep_groups(config) for document in documents_of(group)]
    loaded, tokenizer = load_model_or_tiny(model, corpus)
    suite = KnowledgeSuite(loaded, tokenizer, config, output_dir, progress=progress,
                           kv_memory_bytes=(64 if model == "tiny" else 1024) << 20, resume=resume)
    report = {"model": model, **suite.run()}
    path = write_report(report, output_dir)
    print(format_table(report))
    print(f"wrote {path}, {path.with_suffix('.png')} and {path.with_name('knowledge_budgets.png')}")
    return report


def suite_flags(sleeps: str | None, methods: str | None, tokens_per_document: int | None,
                budgets: str | None = None) -> dict:
    """The suite options of the command line as overrides of ``KnowledgeSuiteConfig`` fields."""
    return {"sleeps": integers("--sleeps", sleeps), "methods": names(methods),
            "tokens_per_document": tokens_per_document, "budgets": floats("--budgets", budgets)}


def add_knowledge_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "suite.seeding.steps=5")
    parser.add_argument("--model", help="packaged name or local folder (default smollm2-135m-instruct; "
                                        "tiny with --tiny)")
    parser.add_argument("--tiny", action="store_true", default=None, help="a tiny random model and a small protocol")
    parser.add_argument("--sleeps", help="people per sleep, in order, e.g. 1,50 (suite.sleeps)")
    parser.add_argument("--methods", help="comma-separated subset of base,in-context,sft,gkd,ks,ks-lti,ks-memory,"
                                          "oracle,paraphrase-oracle,sentence-oracle and issue 12's seal,sleep,"
                                          "sleep-no-selection,sleep-no-noise,sleep-no-seeding,dreaming-round0 "
                                          "(suite.methods)")
    parser.add_argument("--tokens-per-document", type=int, help="the sleep budget (suite.tokens_per_document)")
    parser.add_argument("--budgets", help="multipliers of the sleep budget, e.g. 1,4,16: each trained row runs once "
                                          "per multiplier (suite.budgets)")
    parser.add_argument("--output-dir", help="checkpoints, knowledge.json/.png (default sleepcore-eval)")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="keep the rows and generators an interrupted run of the same config finished in "
                             "--output-dir (resume)")


def knowledge_config(args: argparse.Namespace) -> EvalKnowledgeConfig:
    """The config of ``sleepcore eval knowledge``: defaults (tiny or not), file, flags, ``--set``."""
    flags = {"model": args.model, "output_dir": args.output_dir, "tiny": args.tiny, "resume": args.resume,
             **{f"suite.{key}": value for key, value in
                suite_flags(args.sleeps, args.methods, args.tokens_per_document, args.budgets).items()}}
    return configure(args, flags, by_tiny(knowledge_defaults))


def run_knowledge(args: argparse.Namespace) -> int:
    config = knowledge_config(args)
    run_knowledge_eval(config.model, config.suite, output_dir=config.output_dir, resume=config.resume)
    return 0


class Suite(NamedTuple):
    help: str
    description: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUITES = {"knowledge": Suite("base, in-context, SFT, GKD, Knowledge Seeding and the oracles at sleep budgets",
                             KNOWLEDGE_DESCRIPTION, KNOWLEDGE_EXAMPLE,
                             add_knowledge_arguments, run_knowledge)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    suites = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, suite in SUITES.items():
        sub = suites.add_parser(name, help=suite.help, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=describe(suite.description, suite.example))
        sub.set_defaults(label=f"eval {name}")
        suite.add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    return SUITES[args.suite].run(args)
