"""Sleep benchmark (issues 5, 11 and 12's targets): the knowledge suite on SmolLM2-135M-Instruct, CPU, fixed seed.

It runs ``sleepcore.tasks.knowledge_suite`` (base, in-context, SFT, GKD only, full Knowledge
Seeding at one token budget; a 1-person sleep, then a 50-person sleep), prints the table and the
targets (Knowledge Seeding's closed-book EM >= 0.7x the in-context ceiling and >= 2x SFT on the
last sleep; retention of the earlier sleep within 5 points; drift KL no larger than SFT's), writes
knowledge.json/.png to ``--output-dir`` and appends one row per method and sleep to
``bench/results/sleep-knowledge-<device>.csv``.

Issue 12 (Dreaming; ``--dreaming``): the methods base, in-context, ks (= Sleep without Dreaming),
seal, sleep, sleep-no-selection, sleep-no-noise, sleep-no-seeding (Sleep's Dreaming alone) and
dreaming-round0, every row from documents alone
(``wake_questions`` off, so ks sees no question either), on held-out people; the generators are
meta-trained once by ReST-EM on ``dream_training.people`` training people of another seed (6 in the
shipped config; names disjoint). Targets
(``tasks.knowledge_report.check_targets``, last sleep, 1-hop "contains"): Sleep closes >= 0.5 of
the closed-book gap ((sleep - base) / (in-context - base)) and >= 2x Knowledge Seeding's gap
closure; the ordering sleep >= seal > ks >= base; Sleep's retention within 5 points and its drift
KL against SFT's (add sft to ``--methods`` for that one); each generator's ReST-EM reward higher
after the last round than at round 0. The CSV gets one row per generator and round too
(``case = rest-em``). ``--dreaming`` runs the settings of ``bench/configs/issue12-dreaming.toml``
(the best measured so far; ``--config`` another ``sleepcore eval knowledge`` TOML, ``--set`` one
field). Budget: the whole run under 2 hours on the 2-core machine; measured as one job in session
42 (two threads, alone, with two ReST-EM updates; session 43 ships one, which saves one generator
update): 93 minutes on an Intel Xeon with AMX in bf16, the two generators' meta-training 19 of
them; on an AMD EPYC in fp32 it took about 3 hours (sessions 26-27, an older config), the training
steps compute-bound at the CPU's fp32 peak (README, Dreaming).

Usage: ``python bench/bench_sleep.py [--sleeps 1,50] [--tokens-per-document 200] [--dreaming] [--tiny]
[--config FILE.toml] [--set KEY.PATH=VALUE] [--resume]`` (``--resume``: keep the rows and
generators an interrupted run of the same config finished in ``--output-dir``; a resumed run's CSV
``seconds`` are still each row's own)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sleepcore.benchmarks import harness
from sleepcore.cli.eval import knowledge_defaults, run_knowledge_eval, suite_flags
from sleepcore.cli.options import add_config_arguments, by_tiny, configure
from sleepcore.tasks.knowledge_report import check_targets, retention_delta

#: Issue 12's table (``--dreaming``).
DREAMING_TABLE = ("base", "in-context", "ks", "seal", "sleep", "sleep-no-selection", "sleep-no-noise",
                  "sleep-no-seeding", "dreaming-round0")
#: ``--dreaming``'s config unless ``--config`` is given.
DREAMING_CONFIG = Path(__file__).parent / "configs" / "issue12-dreaming.toml"


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
    for name, generator in (report.get("dreaming") or {}).get("generators", {}).items():
        for index, reward in enumerate(generator["reward_per_round"]):
            rows.append({"bench": "sleep", "case": "rest-em", "model": report["model"], "provider": f"{name}-generator",
                         "round": index, "reward": reward})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "suite.seed=0")
    parser.add_argument("--sleeps", default=None)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--tokens-per-document", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", default=None, help="a tiny random model (a smoke run)")
    parser.add_argument("--dreaming", action="store_true",
                        help=f"issue 12: {DREAMING_CONFIG.name} (unless --config), documents only")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--resume", action="store_true", default=None,
                        help="keep the rows and generators an interrupted run of the same config finished")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.dreaming and args.config is None and not args.tiny:
        args.config = str(DREAMING_CONFIG)
    methods = args.methods or (",".join(DREAMING_TABLE) if args.dreaming and args.config is None else None)
    flags = {"tiny": args.tiny, "output_dir": args.output_dir, "resume": args.resume,
             **{f"suite.{key}": value for key, value in suite_flags(args.sleeps, methods,
                                                                    args.tokens_per_document).items()}}
    if args.dreaming:
        flags["suite.wake_questions"] = False
    defaults = by_tiny(knowledge_defaults)
    config = configure(args, flags, lambda values, overrides: dataclasses.replace(defaults(values, overrides),
                                                                                  output_dir="bench-sleep"))
    report = run_knowledge_eval(config.model, config.suite, output_dir=config.output_dir, resume=config.resume)
    for check in check_targets(report):
        print(check)
    csv_path = args.csv or harness.results_path("sleep-knowledge", Path(__file__).parent / "results")
    harness.append_csv(csv_path, rows_of(report))
    print(f"appended to {csv_path}")

if __name__ == "__main__":
    main()
