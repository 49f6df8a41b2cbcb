"""Sleep benchmark (issue 5's targets): the knowledge suite on SmolLM2-135M-Instruct, CPU, fixed seed.

It runs ``sleepcore.tasks.knowledge_suite`` (base, in-context, SFT, GKD only, full Knowledge
Seeding at one token budget; a 1-person sleep, then a 50-person sleep), prints the table and the
targets (Knowledge Seeding's closed-book EM >= 0.7x the in-context ceiling and >= 2x SFT on the
last sleep; retention of the earlier sleep within 5 points; drift KL no larger than SFT's), writes
knowledge.json/.png to ``--output-dir`` and appends one row per method and sleep to
``bench/results/sleep-knowledge-<device>.csv``.

Usage: ``python bench/bench_sleep.py [--sleeps 1,50] [--tokens-per-document 200] [--tiny]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sleepcore.benchmarks import harness
from sleepcore.cli.eval import config_from_arguments, run_knowledge_eval
from sleepcore.models import DEFAULT_MODEL
from sleepcore.tasks.knowledge_report import check_targets, retention_delta


def rows_of(report: dict) -> list[dict]:
    rows = []
    for method, entry in report["results"].items():
        deltas = retention_delta(report, method) if entry.get("retention") else []
        for index, sleep in enumerate(entry["sleeps"]):
            rows.append({"bench": "sleep", "case": "knowledge", "model": report["model"], "provider": method,
                         "sleep": index, "people": sleep["people"], "tokens": sleep.get("tokens", ""),
                         "em": sleep["one_hop"]["em"], "f1": sleep["one_hop"]["f1"],
                         "contains": sleep["one_hop"]["contains"], "two_hop_contains": sleep["two_hop"]["contains"],
                         "retention_df1": min(deltas) if deltas and index == len(entry["sleeps"]) - 1 else "",
                         "drift_kl": entry.get("drift_kl", ""), "seconds": sleep.get("train_seconds", "")})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sleeps", default=None)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--tokens-per-document", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke run)")
    parser.add_argument("--output-dir", default="bench-sleep")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    config = config_from_arguments(args.tiny, args.sleeps, args.methods, args.tokens_per_document)
    report = run_knowledge_eval("tiny" if args.tiny else DEFAULT_MODEL, config, output_dir=args.output_dir)
    for check in check_targets(report):
        print(check)
    csv_path = args.csv or harness.results_path("sleep-knowledge", Path(__file__).parent / "results")
    harness.append_csv(csv_path, rows_of(report))
    print(f"appended to {csv_path}")


if __name__ == "__main__":
    main()
