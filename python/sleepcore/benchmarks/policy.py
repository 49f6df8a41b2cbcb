"""Policy-loss benchmark: ``torch`` (materialised logits, log_softmax, gather, then the plain
PyTorch reference loss), ``torch_compile``, ``liger`` (chunked ``LigerFusedLinearGRPOLoss``) and
``sleepcore`` (``FusedLinearPolicyLoss``), GRPO, on the same inputs, timed forward, backward and
full by :mod:`sleepcore.benchmarks.driver`.

Run ``python bench/bench_policy.py --case cpu``. TFLOP/s of ``full`` counts three logits-sized
GEMMs, ``6*N*H*V`` (eager torch does three too; sleepcore's fused loss does exactly three).
Rows go to ``bench/results/policy-<device>.csv``.
"""

from __future__ import annotations

import torch

from sleepcore.benchmarks import driver
from sleepcore.benchmarks.driver import Benchmark, Run
from sleepcore.benchmarks.shapes import HEADS, POLICY_CASES

PROVIDERS = ("torch", "torch_compile", "liger", "sleepcore")


def build_inputs(case, seed: int = 0):
    """Seeded ``(hidden [B,T,H], weight [V,H], token_ids, old_logp, advantages [B], mask)``."""
    head = HEADS[case.head]
    dtype, device = getattr(torch, case.dtype), torch.device(case.device)
    generator = torch.Generator().manual_seed(seed)
    shape = (case.sequences, case.seq_len)
    hidden = (torch.randn(*shape, head.hidden, generator=generator)).to(device, dtype).requires_grad_()
    weight = (torch.randn(head.vocab, head.hidden, generator=generator) * head.hidden ** -0.5).to(device, dtype)
    weight.requires_grad_()
    token_ids = torch.randint(0, head.vocab, shape, generator=generator).to(device)
    old_logp = (-torch.rand(shape, generator=generator) * 2 - 9).to(device)
    advantages = torch.randn(case.sequences, generator=generator).to(device)
    lengths = torch.randint(case.seq_len // 2, case.seq_len + 1, (case.sequences,), generator=generator)
    mask = (torch.arange(case.seq_len)[None, :] < lengths[:, None]).to(device)
    return hidden, weight, token_ids, old_logp, advantages, mask


def make_run(provider: str, case, inputs, options) -> Run:
    """The provider's GRPO loss on ``inputs``; hidden states and weight get gradients."""
    loss = loss_function(provider)
    return Run(lambda: loss(*inputs), leaves=inputs[:2], weight=inputs[1])


def loss_function(provider: str):
    """``f(hidden, weight, token_ids, old_logp, advantages, mask) -> loss`` (or ``(loss, metrics)``)."""
    from sleepcore import reference
    from sleepcore.losses import FusedLinearPolicyLoss

    def eager(hidden, weight, token_ids, old_logp, advantages, mask):
        logits = hidden @ weight.T
        logp = torch.log_softmax(logits.float(), -1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
        return reference.policy_loss(logp, old_logp, advantages, mask, loss_type="grpo")[0]

    if provider == "torch":
        return eager
    if provider == "torch_compile":
        return torch.compile(eager, dynamic=False)
    if provider == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        liger = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, loss_type="grpo")
        return lambda hidden, weight, token_ids, old_logp, advantages, mask: liger(
            hidden, weight, token_ids, mask.long(), advantages, old_per_token_logps=old_logp)
    if provider == "sleepcore":
        return FusedLinearPolicyLoss("grpo")
    raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")


def _flops(case) -> int:
    head = HEADS[case.head]
    return 6 * case.tokens * head.hidden * head.vocab


def _describe(case) -> str:
    head = HEADS[case.head]
    return (f"GRPO policy loss: B={case.sequences} T={case.seq_len} (N={case.tokens}) H={head.hidden} "
            f"V={head.vocab} ({head.model}) {case.dtype}")


def _case_fields(case, options) -> dict:
    head = HEADS[case.head]
    return {"tokens": case.tokens, "sequences": case.sequences, "seq_len": case.seq_len, "hidden": head.hidden,
            "vocab": head.vocab, "dtype": case.dtype}


BENCHMARK = Benchmark("policy", "sleepcore.benchmarks.policy", POLICY_CASES, PROVIDERS, build_inputs, make_run,
                      _describe, _case_fields, flops=_flops)


def main(argv: list[str] | None = None) -> list[dict]:
    return driver.main(BENCHMARK, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
