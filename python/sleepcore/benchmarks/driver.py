"""The command-line driver shared by the provider benchmarks (distill, policy).

A benchmark is a :class:`Benchmark`: its cases, providers, how to build seeded inputs, how to
make each provider's loss function, and its FLOP count. The driver runs each provider in its own
process (see :mod:`harness`), prints one table with ratios against the baseline measured in the
same run (Liger when installed, else eager torch) and appends the rows to a CSV.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sleepcore.benchmarks import harness
from sleepcore.benchmarks.shapes import HEADS


@dataclass(frozen=True)
class Benchmark:
    """What the driver needs to know about one benchmark.

    Attributes:
        name: short name (CSV ``bench`` column). module: importable module that runs the worker.
        cases: case name -> object with ``tokens``, ``head`` (a key of ``HEADS``), ``dtype``, ``device``.
        providers: provider names in display order.
        build_inputs: ``case -> tuple`` of seeded inputs; element 1 is the weight whose grad norm is shown.
        loss_function: ``(provider, options) -> f(*inputs) -> loss`` (a scalar, or ``(loss, metrics)``).
        flops: ``case -> FLOPs`` of one forward+backward. describe: ``case -> str`` for the title.
    """

    name: str
    module: str
    cases: dict
    providers: tuple[str, ...]
    build_inputs: Callable
    loss_function: Callable
    flops: Callable
    describe: Callable


def worker(bench: Benchmark, provider: str, case_name: str, options: argparse.Namespace) -> dict:
    case = bench.cases[case_name]
    inputs = bench.build_inputs(case)
    baseline = harness.peak_memory_bytes(case.device)
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    fn = bench.loss_function(provider, options)
    result = {}

    def step():
        inputs[0].grad = inputs[1].grad = None
        loss = fn(*inputs)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        result["loss"] = loss

    times = harness.timed_runs(step, case.device, options.warmup, options.reps)
    stats = harness.quantiles(times)
    return {"provider": provider, **stats, "peak_bytes": harness.peak_memory_bytes(case.device),
            "baseline_bytes": baseline, "tflops": bench.flops(case) / stats["median_s"] / 1e12,
            "loss": float(result["loss"]), "grad_weight_norm": float(inputs[1].grad.float().norm())}


def _available(provider: str) -> bool:
    return provider != "liger" or importlib.util.find_spec("liger_kernel") is not None


def print_table(title: str, results: list[dict]) -> None:
    ok = [r for r in results if "error" not in r]
    baseline = next((r for r in ok if r["provider"] == "liger"), None) or next(
        (r for r in ok if r["provider"] == "torch"), None)
    print(f"\n{title} on {harness.device_name()}; baseline = {baseline and baseline['provider']}")
    print(f"{'provider':<14}{'median s':>10}{'p20-p80 s':>16}{'x baseline':>12}{'peak GB':>10}{'x baseline':>12}"
          f"{'extra GB':>10}{'TFLOP/s':>9}{'loss':>12}{'|grad W|':>11}")
    for r in results:
        if "error" in r:
            print(f"{r['provider']:<14}failed: {r['error']}")
            continue
        time_ratio = r["median_s"] / baseline["median_s"] if baseline else float("nan")
        memory_ratio = r["peak_bytes"] / baseline["peak_bytes"] if baseline else float("nan")
        print(f"{r['provider']:<14}{r['median_s']:>10.3f}{r['p20_s']:>8.3f}-{r['p80_s']:<7.3f}{time_ratio:>12.2f}"
              f"{r['peak_bytes'] / 1e9:>10.2f}{memory_ratio:>12.2f}{(r['peak_bytes'] - r['baseline_bytes']) / 1e9:>10.2f}"
              f"{r['tflops']:>9.3f}{r['loss']:>12.5f}{r['grad_weight_norm']:>11.4f}")


def main(bench: Benchmark, argv: list[str] | None, add_options: Callable | None = None,
         description: str = "") -> list[dict]:
    """Parse ``argv``; run the workers (or, with ``--worker``, be one); print and record results."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--case", choices=sorted(bench.cases), default="small")
    parser.add_argument("--providers", default=",".join(bench.providers),
                        help="comma-separated subset of " + ",".join(bench.providers))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--csv", type=Path, default=None,
                        help="append rows here (default: bench/results/<device>.csv when ./bench/results exists)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    if add_options:
        add_options(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(bench, args.worker, args.case, args)))
        return []
    case = bench.cases[args.case]
    if case.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"case {args.case!r} needs a CUDA GPU")
    extra = _without(argv, ("--case", "--providers", "--csv"))
    results = []
    for provider in args.providers.split(","):
        if not _available(provider):
            print(f"{provider}: not installed, skipped (pip install 'sleepcore[bench]')")
            continue
        print(f"running {provider} ...", flush=True)
        results.append(harness.run_worker(bench.module, provider, args.case, extra, timeout_s=3600))
    print_table(bench.describe(case), results)
    csv_path = args.csv or (Path("bench/results") / f"{harness.device_name()}.csv"
                            if Path("bench/results").is_dir() else None)
    head = HEADS[case.head]
    rows = [{"bench": bench.name, "case": args.case, "tokens": case.tokens, "hidden": head.hidden, "vocab": head.vocab,
             "dtype": case.dtype, **r} for r in results]
    if csv_path and rows:
        harness.append_csv(csv_path, rows)
        print(f"appended {len(rows)} rows to {csv_path}")
    return results


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` minus the given ``--option value`` pairs (the driver sets those per worker)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in options:
            skip = True
        elif not any(item.startswith(option + "=") for option in options):
            kept.append(item)
    return kept
