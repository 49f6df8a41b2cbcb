"""``sleepcore`` command line: ``sleepcore demo [--tiny]``, ``sleepcore run --config FILE.toml``,
``sleepcore eval knowledge [options]``, ``sleepcore info`` and ``sleepcore bench
distill|policy|rollout [options]``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="sleepcore", description="sleepcore: fused kernels for LLM sleep cycles")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print build_info() as JSON")
    demo = commands.add_parser("demo", help="read 20 new biographies, sleep once, answer closed-book (SmolLM2)")
    demo.add_argument("--tiny", action="store_true", help="a tiny random model: the same pipeline in seconds")
    demo.add_argument("--people", type=int, default=None, help="biographies to learn (default 20; 3 with --tiny)")
    demo.add_argument("--output-dir", default="sleepcore-demo", help="checkpoints, metrics, knowledge.json/.png")
    run = commands.add_parser("run", help="wake on documents and sleep on a schedule (see sleepcore/run.py)")
    run.add_argument("--config", required=True, help="a TOML file: output_dir, [model], [documents], [schedule], "
                                                     "[memory], [sleep]")
    evaluation = commands.add_parser("eval", help="evaluation suites")
    suites = evaluation.add_subparsers(dest="suite", required=True)
    knowledge = suites.add_parser("knowledge", help="base, in-context, SFT, GKD and Knowledge Seeding at one budget")
    knowledge.add_argument("--model", default=None, help="packaged name or local folder (default SmolLM2-135M)")
    knowledge.add_argument("--tiny", action="store_true", help="a tiny random model and a small protocol")
    knowledge.add_argument("--sleeps", default=None, help="people per sleep, in order (default 1,50)")
    knowledge.add_argument("--methods", default=None, help="comma-separated subset of base,in-context,sft,gkd,ks")
    knowledge.add_argument("--tokens-per-document", type=int, default=None, help="the sleep budget (default 200)")
    knowledge.add_argument("--output-dir", default="sleepcore-eval", help="checkpoints, knowledge.json/.png")
    bench = commands.add_parser("bench", help="run a benchmark (extra options go to it; see --help there)")
    bench.add_argument("name", choices=["distill", "policy", "rollout"])
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo" and not rest:
        return _demo(args)
    if args.command == "run" and not rest:
        return _run(args)
    if args.command == "eval" and not rest:
        return _eval_knowledge(args)
    if args.command == "info":
        from sleepcore import build_info

        print(json.dumps(build_info(), indent=2))
        return 0
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from sleepcore.benchmarks import distill, policy, rollout

    {"distill": distill, "policy": policy, "rollout": rollout}[args.name].main(rest)
    return 0


def _one_line_errors(command: str, action) -> int:
    """Runs ``action()``; a failure a user can fix (a missing package, a bad option, config field,
    path or model type) is one error line saying what to do."""
    try:
        action()
    except (ModuleNotFoundError, ValueError) as error:
        print(f"sleepcore {command}: {error}", file=sys.stderr)
        return 1
    return 0


def _run(args) -> int:
    from sleepcore.run import run

    return _one_line_errors("run", lambda: run(args.config))


def _eval_knowledge(args) -> int:
    from sleepcore.eval_knowledge import config_from_arguments, run_knowledge_eval
    from sleepcore.models import DEFAULT_MODEL

    def evaluate():
        config = config_from_arguments(args.tiny, args.sleeps, args.methods, args.tokens_per_document)
        run_knowledge_eval("tiny" if args.tiny else (args.model or DEFAULT_MODEL), config, output_dir=args.output_dir)

    return _one_line_errors("eval knowledge", evaluate)


def _demo(args) -> int:
    from sleepcore.demo import run_demo

    return _one_line_errors("demo", lambda: run_demo(tiny=args.tiny, people=args.people, output_dir=args.output_dir))


if __name__ == "__main__":
    sys.exit(main())
