"""``sleepcore eval knowledge``: the knowledge suite (:mod:`sleepcore.tasks.knowledge_suite`) on a
packaged model, a local model folder or (``--tiny``) a tiny random model; prints the table and
writes ``knowledge.json`` and ``knowledge.png``."""

from __future__ import annotations

import dataclasses
import os

from sleepcore.models import DEFAULT_MODEL, load_model_or_tiny
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.tasks.knowledge_report import format_table, write_report
from sleepcore.tasks.knowledge_suite import KnowledgeSuite, KnowledgeSuiteConfig, documents_of, sleep_groups

#: ``--tiny``: the same protocol on a tiny random model in seconds (for tests).
TINY_CONFIG = KnowledgeSuiteConfig(
    sleeps=(1, 3), tokens_per_document=24, prompts_per_document=2, drift_prompts=4, drift_tokens=8, fast_period=32,
    seeding=KnowledgeSeedingConfig(steps=1000, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1))


def run_knowledge_eval(model: str = DEFAULT_MODEL, config: KnowledgeSuiteConfig | None = None, *,
                       output_dir: str | os.PathLike = "sleepcore-eval", progress: bool = True) -> dict:
    """Runs the suite on ``model`` ("tiny" for a tiny random model); returns the report."""
    try:
        import matplotlib  # noqa: F401  (the report's plot: checked before the long run, not after)
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the knowledge report's plot needs matplotlib: pip install matplotlib") from None
    config = config or (TINY_CONFIG if model == "tiny" else KnowledgeSuiteConfig())
    corpus = [document for group in sleep_groups(config) for document in documents_of(group)]
    loaded, tokenizer = load_model_or_tiny(model, corpus)
    suite = KnowledgeSuite(loaded, tokenizer, config, output_dir, progress=progress,
                           kv_memory_bytes=(64 if model == "tiny" else 1024) << 20)
    report = {"model": model, **suite.run()}
    path = write_report(report, output_dir)
    print(format_table(report))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return report


def config_from_arguments(tiny: bool, sleeps: str | None, methods: str | None,
                          tokens_per_document: int | None) -> KnowledgeSuiteConfig:
    """The CLI's options over the default (or tiny) config; ValueError names a bad option."""
    base = TINY_CONFIG if tiny else KnowledgeSuiteConfig()
    changes = {}
    if sleeps is not None:
        try:
            changes["sleeps"] = tuple(int(part) for part in sleeps.split(","))
        except ValueError:
            raise ValueError(f"--sleeps must be comma-separated ints, got {sleeps!r}") from None
    if methods is not None:
        changes["methods"] = tuple(part.strip() for part in methods.split(","))
    if tokens_per_document is not None:
        changes["tokens_per_document"] = tokens_per_document
    return dataclasses.replace(base, **changes)
