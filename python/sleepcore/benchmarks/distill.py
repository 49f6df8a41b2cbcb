"""Fused distillation benchmark: ``torch`` (eager, materialised logits), ``torch_compile``,
``liger`` (chunked ``LigerFusedLinearJSDLoss``, hard-loss weight 0) and ``sleepcore``, on the
same inputs, timed forward, backward and full by :mod:`sleepcore.benchmarks.driver`.

Run ``python bench/bench_distill.py --case cpu`` (or ``sleepcore bench distill --case cpu``).
TFLOP/s of ``full`` counts 2*N*V*(3*Hs + Ht) (student and teacher logits, grad_hidden, grad_weight).
Rows go to ``bench/results/distill-<device>.csv``.
"""

from __future__ import annotations

import torch

from sleepcore.benchmarks import driver
from sleepcore.benchmarks.driver import Benchmark, Run
from sleepcore.benchmarks.shapes import DISTILL_CASES, HEADS

PROVIDERS = ("torch", "torch_compile", "liger", "sleepcore")


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


def make_run(provider: str, case, inputs, options) -> Run:
    """The provider's loss on ``inputs``; the student's hidden states and weight get gradients."""
    loss = loss_function(provider, options.beta, options.temperature)
    return Run(lambda: loss(*inputs), leaves=inputs[:2], weight=inputs[1])


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


def _flops(case) -> int:
    head = HEADS[case.head]
    return 2 * case.tokens * head.vocab * (3 * head.hidden + head.hidden)


def _describe(case) -> str:
    head = HEADS[case.head]
    return f"fused linear JSD: N={case.tokens} H={head.hidden} V={head.vocab} ({head.model}) {case.dtype}"


def _case_fields(case, options) -> dict:
    head = HEADS[case.head]
    return {"tokens": case.tokens, "hidden": head.hidden, "vocab": head.vocab, "dtype": case.dtype,
            "beta": options.beta, "temperature": options.temperature}


def _options(parser) -> None:
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)


BENCHMARK = Benchmark("distill", "sleepcore.benchmarks.distill", DISTILL_CASES, PROVIDERS, build_inputs, make_run,
                      _describe, _case_fields, flops=_flops, add_options=_options)


def main(argv: list[str] | None = None) -> list[dict]:
    return driver.main(BENCHMARK, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
