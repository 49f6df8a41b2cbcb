"""The one benchmark driver: providers on the same inputs, each timed per mode in its own process.

A :class:`Benchmark` says how to build a case's seeded inputs and how to make each provider's
:class:`Run` (a callable that returns a loss, ``(loss, metrics)`` or a dict of counts). For each
provider the driver starts a fresh interpreter, which builds the inputs, takes the memory baseline
and times each mode, as Liger's benchmarks do:

* ``forward``: one call (autograd on, so a fused loss that computes its gradients in the forward
  pass pays for them here; rollout's ``generate`` is its forward);
* ``backward``: ``loss.backward()`` alone; the forward runs before each timed call, outside the
  timed region (its memory is in the mode's peak);
* ``full``: forward and backward.

A benchmark without a backward (rollout; a sleep benchmark whose call runs one sleep and returns
its token counts) declares only ``forward`` and a ``throughput`` count.

Each mode reports the median with p20/p80 over ``--reps`` timed calls after ``--warmup`` calls,
the peak memory of the mode (RSS high-water mark on CPU, ``max_memory_allocated`` on CUDA), the
baseline (RSS or allocated memory after imports and inputs, before the provider's first call) and
the extra memory above it, and one physical metric (TFLOP/s of ``full``, or tokens/s). The
baseline includes ``torch._dynamo``, which ``torch.compile`` and every ``torch.library`` custom
op import on their first call (about 170 MiB of RSS on CPU), so that this one-time import is not
charged to the first provider that happens to trigger it. Modes run in the order given (default ``full`` first),
so one-time costs such as compilation land in the first; between modes the previous mode's
tensors are freed and the peak is reset.

The driver prints a table with ratios against a reference provider measured in the same run
(Liger when installed, else eager torch) and appends one row per provider and mode to
``bench/results/<family>-<device>.csv``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from sleepcore.benchmarks import harness

MODES = ("full", "forward", "backward")
#: how the ``baseline_bytes`` of a row was taken (rows from older drivers say theirs)
MEMORY_BASELINE = {"cpu": "rss-after-inputs", "cuda": "allocated-after-inputs"}


@dataclass
class Run:
    """One provider ready on one case's inputs, built inside its worker process.

    Attributes:
        call: runs the provider once; returns a scalar loss, ``(loss, metrics)`` or a dict of counts.
        leaves: tensors whose ``.grad`` is cleared before every call.
        weight: a leaf whose gradient norm the row reports (``grad_weight_norm``), when it has one.
        report: ``output -> dict`` of extra row fields, given the mode's last output (after timing,
            outside the memory reading).
    """

    call: Callable[[], Any]
    leaves: tuple = ()
    weight: torch.Tensor | None = None
    report: Callable[[Any], dict] | None = None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark family run by :func:`main`.

    Attributes:
        family: short name: the CSV ``bench`` column and file ``<family>-<device>.csv``.
        module: importable module whose ``main`` runs this benchmark (the worker runs ``python -m module``).
        cases: case name -> case object with a ``device`` attribute (``"cpu"`` or ``"cuda"``).
        providers: provider names in display order.
        inputs: ``case -> inputs`` (seeded; built in the worker before the baseline is taken).
        make_run: ``(provider, case, inputs, options) -> Run``.
        describe: ``case -> str`` for the table's title. case_fields: ``(case, options) -> dict`` of CSV columns.
        modes: the modes this benchmark supports (a subset of :data:`MODES`).
        flops: ``case -> FLOPs`` of one forward+backward, for the TFLOP/s of ``full``.
        throughput: ``(count, rate)``: a dict output's ``count`` over the median time is the row's ``rate``.
        reference: providers the ratios are taken against, the first one measured.
        default_providers: ``case -> providers`` run when ``--providers`` is not given.
        warmup, reps: default untimed and timed calls per mode.
        add_options: adds the benchmark's own command-line options to the parser.
        table_fields: extra row fields printed under a provider's row.
    """

    family: str
    module: str
    cases: Mapping[str, Any]
    providers: tuple[str, ...]
    inputs: Callable[[Any], Any]
    make_run: Callable[[str, Any, Any, argparse.Namespace], Run]
    describe: Callable[[Any], str]
    case_fields: Callable[[Any, argparse.Namespace], dict]
    modes: tuple[str, ...] = MODES
    flops: Callable[[Any], int] | None = None
    throughput: tuple[str, str] | None = None
    reference: tuple[str, ...] = ("liger", "torch")
    default_providers: Callable[[Any], tuple[str, ...]] | None = None
    warmup: int = 1
    reps: int = 5
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    table_fields: tuple[str, ...] = ("grad_weight_norm",)


def _loss_of(output):
    output = output[0] if isinstance(output, tuple) else output
    return output if isinstance(output, torch.Tensor) else None


def measure(bench: Benchmark, run: Run, case, mode: str, warmup: int, reps: int) -> dict:
    """Time one mode of a run; the row's memory fields are the mode's peak (reset at its start)."""
    last = {}

    def clear(_=None):  # untimed: the previous call's graph and gradients go before the next call
        last.pop("output", None)
        for leaf in run.leaves:
            leaf.grad = None

    def call(_=None):
        last["output"] = run.call()
        return _loss_of(last["output"])

    step, prepare = {"forward": (call, clear), "full": (lambda _: call().backward(), clear),
                     "backward": (lambda loss: loss.backward(), lambda: clear() or call())}[mode]
    harness.release_memory(case.device)
    harness.reset_peak(case.device)
    times = harness.timed_runs(step, case.device, warmup, reps, prepare=prepare)
    row = {"mode": mode, **harness.quantiles(times), "peak_bytes": harness.peak_memory_bytes(case.device)}
    output = last.pop("output")
    if _loss_of(output) is not None:
        row["loss"] = float(_loss_of(output).detach())
    if bench.flops and mode == "full":
        row["tflops"] = bench.flops(case) / row["median_s"] / 1e12
    if bench.throughput and isinstance(output, dict):
        count, rate = bench.throughput
        row[count], row[rate] = output[count], output[count] / row["median_s"]
    if run.weight is not None and run.weight.grad is not None:
        row["grad_weight_norm"] = float(run.weight.grad.float().norm())
    if run.report:
        row.update(run.report(output))
    return row


def worker(bench: Benchmark, provider: str, case_name: str, options: argparse.Namespace) -> dict:
    """In a fresh process: inputs, baseline, then each mode of ``options.modes``; the rows as JSON-able dicts."""
    import torch._dynamo  # noqa: F401  (in the baseline; see the module docstring)

    case = bench.cases[case_name]
    inputs = bench.inputs(case)
    harness.release_memory(case.device)
    baseline = harness.memory_now(case.device)
    run = bench.make_run(provider, case, inputs, options)
    rows = []
    for mode in options.modes.split(","):
        row = measure(bench, run, case, mode, options.warmup, options.reps)
        rows.append({"provider": provider, **row, "baseline_bytes": baseline,
                     "extra_bytes": row["peak_bytes"] - baseline, "memory_baseline": MEMORY_BASELINE[case.device],
                     "threads": torch.get_num_threads()})
    return {"rows": rows}


def available(provider: str) -> bool:
    return provider != "liger" or importlib.util.find_spec("liger_kernel") is not None


def print_table(bench: Benchmark, title: str, rows: list[dict]) -> None:
    """One line per provider and mode, with ratios to the reference provider in the same mode."""
    ok = [r for r in rows if "error" not in r]
    reference = next((p for p in bench.reference if any(r["provider"] == p for r in ok)), None)
    print(f"\n{title} on {harness.device_name()}; ratios against {reference}")
    metric = "TFLOP/s" if bench.flops else bench.throughput[1] if bench.throughput else ""
    print(f"{'provider':<14}{'mode':<9}{'median s':>10}{'p20-p80 s':>16}{'x ref':>7}{'peak GB':>9}{'x ref':>7}"
          f"{'extra GB':>9}{'x ref':>7}{metric:>14}{'loss':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['provider']:<14}failed: {r['error']}")
            continue
        ref = next((b for b in ok if b["provider"] == reference and b["mode"] == r["mode"]), None)
        ratio = lambda key: r[key] / ref[key] if ref and ref[key] else float("nan")  # noqa: E731
        value = r.get("tflops", r.get(metric, float("nan")))
        print(f"{r['provider']:<14}{r['mode']:<9}{r['median_s']:>10.3f}{r['p20_s']:>8.3f}-{r['p80_s']:<7.3f}"
              f"{ratio('median_s'):>7.2f}{r['peak_bytes'] / 1e9:>9.3f}{ratio('peak_bytes'):>7.2f}"
              f"{r['extra_bytes'] / 1e9:>9.3f}{ratio('extra_bytes'):>7.2f}{value:>14.4g}"
              f"{r.get('loss', float('nan')):>11.5f}")
        extras = [f"{key} {r[key]:.4g}" if isinstance(r[key], float) else f"{key} {r[key]}"
                  for key in bench.table_fields if key in r]
        if extras:
            print(f"{'':<23}" + ", ".join(extras))
    print("peak: the mode's peak memory; extra: peak above the baseline after imports and inputs")


def parse(bench: Benchmark, argv: list[str], description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--case", choices=sorted(bench.cases), default="small")
    parser.add_argument("--providers", default=None, help="comma-separated subset of " + ",".join(bench.providers))
    parser.add_argument("--modes", default=",".join(bench.modes), help="comma-separated subset of "
                        + ",".join(bench.modes) + ", run in this order")
    parser.add_argument("--warmup", type=int, default=bench.warmup)
    parser.add_argument("--reps", type=int, default=bench.reps)
    parser.add_argument("--csv", type=Path, default=None, help="append rows to this file instead")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"),
                        help="append rows to <dir>/<family>-<device>.csv (default bench/results, when it exists)")
    parser.add_argument("--note", default="", help="free text for the CSV (e.g. 'machine shared')")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    if bench.add_options:
        bench.add_options(parser)
    args = parser.parse_args(argv)
    for mode in args.modes.split(","):
        if mode not in bench.modes:
            parser.error(f"unknown mode {mode!r}; {bench.family} supports {', '.join(bench.modes)}")
    case = bench.cases[args.case]
    providers = args.providers.split(",") if args.providers else (
        bench.default_providers(case) if bench.default_providers else bench.providers)
    for provider in providers:
        if provider not in bench.providers:
            parser.error(f"unknown provider {provider!r}; choose from {', '.join(bench.providers)}")
    args.providers = providers
    if case.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"case {args.case!r} needs a CUDA GPU")
    return args


def main(bench: Benchmark, argv: list[str] | None = None, description: str = "") -> list[dict]:
    """Parse ``argv``; run one worker per provider (or, with ``--worker``, be one); print and record the rows."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(bench, argv, description)
    if args.worker:
        print(json.dumps(worker(bench, args.worker, args.case, args)))
        return []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    passed = _without(argv, ("--providers", "--csv", "--results-dir", "--note"))
    rows = []
    for provider in args.providers:
        if not available(provider):
            print(f"{provider}: not installed, skipped (pip install 'sleepcore[bench]')")
            continue
        print(f"running {provider} ...", flush=True)
        result = harness.run_worker(bench.module, [*passed, "--worker", provider], timeout_s=3600)
        rows += result.get("rows") or [{"provider": provider, **result}]
    case = bench.cases[args.case]
    print_table(bench, bench.describe(case), rows)
    fields = {"bench": bench.family, "case": args.case, **bench.case_fields(case, args)}
    rows = [{**fields, **row, "load_avg": round(load, 2), "note": args.note} for row in rows]
    path = args.csv or (harness.results_path(bench.family, args.results_dir) if args.results_dir.is_dir() else None)
    if path and rows:
        harness.append_csv(path, rows)
        print(f"appended {len(rows)} rows to {path}")
    return rows


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` minus the given ``--option value`` pairs (the parent's own business)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in options:
            skip = True
        elif not any(item.startswith(option + "=") for option in options):
            kept.append(item)
    return kept
