"""Print build_info() as JSON.

The version, what the compiled core was built with (compiler, OpenMP, CUDA architectures), Triton,
torch and the GPU this process can use.
"""

from __future__ import annotations

import argparse
import json

from sleepcore import build_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    print(json.dumps(build_info(), indent=2))
    return 0
