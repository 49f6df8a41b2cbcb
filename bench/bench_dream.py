"""Dreaming inner-loop benchmark (issue 12); see sleepcore/benchmarks/dream.py.

Usage: ``python bench/bench_dream.py [--cases k1,k4,k8,k16] [driver options, e.g. --reps 3 --note ...]``.
Runs each case through the shared driver (rows to ``bench/results/dream-<device>.csv``), then prints
trained tokens/s per provider and K with the ratios against ``peft`` measured in the same run.
"""

import sys

from sleepcore.benchmarks.dream import summarise, main


def run(argv: list[str]) -> None:
    cases = ["k1", "k4", "k8", "k16"]
    if "--cases" in argv:
        at = argv.index("--cases")
        cases = argv[at + 1].split(",")
        argv = argv[:at] + argv[at + 2:]
    rows = [row for case in cases for row in main(["--case", case, *argv])]
    summarise(rows)


if __name__ == "__main__":
    run(sys.argv[1:])
