"""sleepcore: fused kernels and a wake/sleep cycle that turns what a language model read into
lasting weights. `sleepcore COMMAND --help` describes each command.

One module per command (demo, run, eval, dream, bench, info), each with add_arguments(parser) and
run(args) -> int, in the registry COMMANDS. A command's config is a dataclass loaded from
--config FILE.toml by one loader (sleepcore.configuration, unknown keys refused by path), with
the command's flags and --set KEY.PATH=VALUE on top.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from sleepcore.cli import bench, demo, dream, eval as evaluation, info, run
from sleepcore.cli.options import describe

COMMANDS = {"demo": demo, "run": run, "eval": evaluation, "dream": dream, "bench": bench, "info": info}


def build_parser() -> argparse.ArgumentParser:
    """The ``sleepcore`` parser: one subcommand per entry of :data:`COMMANDS`, described by its
    module's docstring (its first line is the summary) and, where it has one, its config example."""
    parser = argparse.ArgumentParser(prog="sleepcore", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        text = module.__doc__.strip()
        if hasattr(module, "EXAMPLE"):
            text = describe(text, module.EXAMPLE)
        command = commands.add_parser(name, help=text.split("\n")[0], description=text,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        command.set_defaults(label=name)
        module.add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``sleepcore`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    return one_line_errors(args.label, lambda: COMMANDS[args.command].run(args))


def one_line_errors(command: str, action: Callable[[], int]) -> int:
    """Runs ``action()``; a failure a user can fix (a missing package or file, a bad option, config
    field, path or model type) is one stderr line ``sleepcore <command>: <message>`` and exit code 1."""
    try:
        return action()
    except (ModuleNotFoundError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"sleepcore {command}: {error}", file=sys.stderr)
        return 1
