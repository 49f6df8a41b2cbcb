"""``sleepcore demo``: a model reads 20 new biographies (and is asked about them), sleeps once, and
answers closed-book.

It is the knowledge suite (:mod:`sleepcore.tasks.knowledge_suite`) with one sleep: closed-book QA
before sleep (base), with the passages in context (the ceiling), after one sleep of Knowledge
Seeding, and after SFT on the passages at the same number of trained tokens (the baseline), plus
drift on generic prompts. It prints the table and writes ``knowledge.json`` and ``knowledge.png``.
"""

from __future__ import annotations

import dataclasses
import os

from sleepcore.eval_knowledge import TINY_CONFIG, run_knowledge_eval
from sleepcore.models import DEFAULT_MODEL
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig

DEMO_METHODS = ("base", "in-context", "sft", "ks")
#: 20 people (27 documents, 140 wake questions), 200 trained tokens per document: about 10 minutes on 2 cores.
DEMO_CONFIG = dataclasses.replace(KnowledgeSuiteConfig(), sleeps=(20,), methods=DEMO_METHODS, prompts_per_document=2,
                                  drift_prompts=8)


def run_demo(*, tiny: bool = False, people: int | None = None, output_dir: str | os.PathLike = "sleepcore-demo",
             progress: bool = True) -> dict:
    """Runs the demo; returns the suite's report (also written to ``<output_dir>/knowledge.json``)."""
    config = TINY_CONFIG if tiny else DEMO_CONFIG
    config = dataclasses.replace(config, sleeps=(people or (3 if tiny else 20),), methods=DEMO_METHODS)
    return run_knowledge_eval("tiny" if tiny else DEFAULT_MODEL, config, output_dir=output_dir, progress=progress)
