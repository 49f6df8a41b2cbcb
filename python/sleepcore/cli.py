"""``sleepcore`` command line: ``sleepcore info`` and ``sleepcore bench distill|policy [options]``.

(``sleepcore demo``, ``run`` and ``eval`` arrive with the sleep cycle; see the README's status.)
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="sleepcore", description="sleepcore: fused kernels for LLM sleep cycles")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print build_info() as JSON")
    bench = commands.add_parser("bench", help="run a benchmark (extra options go to it; see --help there)")
    bench.add_argument("name", choices=["distill", "policy"])
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        from sleepcore import build_info

        print(json.dumps(build_info(), indent=2))
        return 0
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from sleepcore.benchmarks import distill, policy

    {"distill": distill, "policy": policy}[args.name].main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
