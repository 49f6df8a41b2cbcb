"""Fused distillation benchmark: ``torch`` (eager, materialised logits), ``torch_compile``,
``liger`` (chunked ``LigerFusedLinearJSDLoss``, hard-loss weight 0) and ``sleepcore``, on the
same inputs, forward+backward.

Run ``python bench/bench_distill.py --case cpu`` (or ``sleepcore bench distill --case cpu``).
Each provider runs in its own process; the table gives the median time (p20-p80), the ratio
to the baseline measured in the same run (Liger when installed, else eager torch), peak memory
(RSS on CPU, ``max_memory_allocated`` on GPU), the extra memory over the inputs, and TFLOP/s
counted as 2*N*V*(3*Hs + Ht) (student and teacher logits, grad_hidden, grad_weight).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from sleepcore.benchmarks import harness
from sleepcore.benchmarks.shapes import DISTILL_CASES, HEADS

PROVIDERS = ("torch", "torch_compile", "liger", "sleepcore")
MODULE = "sleepcore.benchmarks.distill"


def build_inputs(case, seed: int = 0):
    """Seeded student/teacher hidden states and heads for ``case`` (identical in every worker)."""
    head = HEADS[case.head]
    dtype, device = getattr(torch, case.dtype), torch.device(case.device)
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape, scale=1.0: (torch.randn(*shape, generator=generator) * scale).to(device, dtype)  # noqa: E731
    student_hidden = make(case.tokens, head.hidden).requires_grad_()
    student_weight = make(head.vocab, head.hidden, scale=head.hidden ** -0.5).requires_grad_()
    teacher_hidden = make(case.tokens, head.hidden)
    teacher_weight = make(head.vocab, head.hidden, scale=2 * head.hidden ** -0.5)
    labels = torch.randint(0, head.vocab, (case.tokens,), generator=generator).to(device)
    labels[: case.tokens // 20] = -100
    return student_hidden, student_weight, teacher_hidden, teacher_weight, labels


def loss_function(provider: str, beta: float, temperature: float):
    """``f(student_hidden, student_weight, teacher_hidden, teacher_weight, labels) -> loss`` for a provider."""
    from sleepcore import ops, reference

    def eager(sh, sw, th, tw, labels):
        return reference.fused_linear_jsd(sh, sw, th, tw, labels, beta=beta, temperature=temperature, upcast=False)

    if provider == "torch":
        return eager
    if provider == "torch_compile":
        return torch.compile(eager, dynamic=False)
    if provider == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        return LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=temperature)
    if provider == "sleepcore":
        return lambda sh, sw, th, tw, labels: ops.fused_linear_jsd(sh, sw, th, tw, labels, beta=beta,
                                                                  temperature=temperature)
    raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")


def worker(provider: str, case_name: str, beta: float, temperature: float, warmup: int, reps: int) -> dict:
    case = DISTILL_CASES[case_name]
    inputs = build_inputs(case)
    head = HEADS[case.head]
    baseline = harness.peak_memory_bytes(case.device)
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    fn = loss_function(provider, beta, temperature)
    result = {}

    def step():
        inputs[0].grad = inputs[1].grad = None
        loss = fn(*inputs)
        loss.backward()
        result["loss"] = loss

    times = harness.timed_runs(step, case.device, warmup, reps)
    flops = 2 * case.tokens * head.vocab * (3 * head.hidden + head.hidden)
    stats = harness.quantiles(times)
    return {"provider": provider, **stats, "peak_bytes": harness.peak_memory_bytes(case.device),
            "baseline_bytes": baseline, "tflops": flops / stats["median_s"] / 1e12,
            "loss": float(result["loss"]), "grad_weight_norm": float(inputs[1].grad.float().norm())}


def _available(provider: str) -> bool:
    return provider != "liger" or importlib.util.find_spec("liger_kernel") is not None


def print_table(case, results: list[dict]) -> None:
    ok = [r for r in results if "error" not in r]
    baseline = next((r for r in ok if r["provider"] == "liger"), None) or next(
        (r for r in ok if r["provider"] == "torch"), None)
    head = HEADS[case.head]
    print(f"\nfused linear JSD, forward+backward: N={case.tokens} H={head.hidden} V={head.vocab} "
          f"({head.model}) {case.dtype} on {harness.device_name()}; baseline = {baseline and baseline['provider']}")
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(DISTILL_CASES), default="small")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated subset of " + ",".join(PROVIDERS))
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--csv", type=Path, default=None,
                        help="append rows here (default: bench/results/<device>.csv when ./bench/results exists)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.case, args.beta, args.temperature, args.warmup, args.reps)))
        return []
    case = DISTILL_CASES[args.case]
    if case.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"case {args.case!r} needs a CUDA GPU")
    extra = ["--beta", str(args.beta), "--temperature", str(args.temperature), "--warmup", str(args.warmup),
             "--reps", str(args.reps)]
    results = []
    for provider in args.providers.split(","):
        if not _available(provider):
            print(f"{provider}: not installed, skipped (pip install 'sleepcore[bench]')")
            continue
        print(f"running {provider} ...", flush=True)
        results.append(harness.run_worker(MODULE, provider, args.case, extra, timeout_s=3600))
    print_table(case, results)
    csv_path = args.csv or (Path("bench/results") / f"{harness.device_name()}.csv"
                            if Path("bench/results").is_dir() else None)
    rows = [{"bench": "distill", "case": args.case, "tokens": case.tokens, "hidden": HEADS[case.head].hidden,
             "vocab": HEADS[case.head].vocab, "dtype": case.dtype, "beta": args.beta, **r} for r in results]
    if csv_path and rows:
        harness.append_csv(csv_path, rows)
        print(f"appended {len(rows)} rows to {csv_path}")
    return results


if __name__ == "__main__":
    main()
