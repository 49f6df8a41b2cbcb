"""Read 10 new biographies, sleep once, answer closed-book (--tiny: a tiny model, in seconds).

A model reads 10 new biographies (the documents alone: no question is asked while awake), sleeps
once, and answers closed-book questions about them. The sleep is the best one measured (issue 12's
settings, ``demo.toml`` beside this file): Knowledge Seeding, then Dreaming with a dream generator
that ReST-EM first meta-trains on 6 other people. It is the knowledge suite
(sleepcore.tasks.knowledge_suite) with one sleep and the rows base (closed-book before sleep),
in-context (the passages in context: the teacher), SFT on the passages at the same number of
trained tokens (the baseline) and Sleep, plus drift on generic prompts. It prints the table and
writes knowledge.json and knowledge.png. With --tiny, the same pipeline runs on a tiny random model
(3 people) in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sleepcore import validation
from sleepcore.cli.eval import TINY_CONFIG, run_knowledge_eval
from sleepcore.cli.options import add_config_arguments, by_tiny, configure
from sleepcore.configuration import from_dict, load_toml
from sleepcore.models import DEFAULT_MODEL
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig

DEMO_METHODS = ("base", "in-context", "sft", "sleep")
#: The demo's sleep settings: the ``[suite]`` table of ``demo.toml`` (issue 12's best measured).
DEMO_SETTINGS = Path(__file__).with_name("demo.toml")
DEMO_CONFIG = from_dict(KnowledgeSuiteConfig, load_toml(DEMO_SETTINGS)["suite"], where="suite")

EXAMPLE = """\
tiny = false                      # true: a tiny random model and a small protocol, in seconds
people = 10                       # biographies to learn (3 with tiny)
model = "smollm2-135m-instruct"   # a packaged name, a local Hugging Face folder, or "tiny" (the default with tiny)
output_dir = "sleepcore-demo"     # checkpoints, metrics, knowledge.json/.png
"""


@dataclass
class DemoConfig:
    """What ``sleepcore demo`` runs: ``people`` biographies learnt in one sleep by ``model``, on the
    demo's protocol (:data:`DEMO_CONFIG`, or :data:`~sleepcore.cli.eval.TINY_CONFIG` with ``tiny``).
    With ``tiny`` the defaults are 3 people and the tiny random model (see :func:`demo_defaults`)."""

    tiny: bool = False
    people: int = 10
    model: str = DEFAULT_MODEL
    output_dir: str = "sleepcore-demo"

    def __post_init__(self):
        validation.boolean("tiny", self.tiny)
        validation.integer("people", self.people, minimum=1)
        validation.text("model", self.model)
        validation.text("output_dir", self.output_dir)

    def suite(self) -> KnowledgeSuiteConfig:
        """The knowledge suite's config for this demo: one sleep of ``people``."""
        return dataclasses.replace(TINY_CONFIG if self.tiny else DEMO_CONFIG, sleeps=(self.people,),
                                   methods=DEMO_METHODS)


def demo_defaults(tiny: bool) -> DemoConfig:
    """The defaults a config file and flags start from."""
    return DemoConfig(tiny=True, people=3, model="tiny") if tiny else DemoConfig()


def run_demo(config: DemoConfig | None = None, *, progress: bool = True) -> dict:
    """Runs the demo; returns the suite's report (also written to ``<output_dir>/knowledge.json``)."""
    config = config or DemoConfig()
    return run_knowledge_eval(config.model, config.suite(), output_dir=config.output_dir, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "people=5")
    parser.add_argument("--tiny", action="store_true", default=None,
                        help="a tiny random model: the same pipeline in seconds")
    parser.add_argument("--people", type=int, help="biographies to learn (default 10; 3 with --tiny)")
    parser.add_argument("--model", help="packaged name or local folder (default smollm2-135m-instruct; "
                                        "tiny with --tiny)")
    parser.add_argument("--output-dir", help="checkpoints, metrics, knowledge.json/.png (default sleepcore-demo)")


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The demo's config: defaults (tiny or not), then the file, the flags and ``--set``."""
    flags = {"tiny": args.tiny, "people": args.people, "model": args.model, "output_dir": args.output_dir}
    return configure(args, flags, by_tiny(demo_defaults))


def run(args: argparse.Namespace) -> int:
    run_demo(demo_config(args))
    return 0
