"""Run a benchmark (distill, policy, rollout); the options after its name go to it.

Every option after the benchmark's name goes to it (sleepcore.benchmarks.<name>.main): see
`sleepcore bench NAME --help`. Results are printed and appended to a CSV; time benchmarks on an idle
machine only.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("distill", "policy", "rollout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=BENCHMARKS, help="the benchmark")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")


def run(args: argparse.Namespace) -> int:
    importlib.import_module(f"sleepcore.benchmarks.{args.name}").main(args.options)
    return 0
