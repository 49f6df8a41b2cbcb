"""Policy-loss benchmark: ``torch`` (materialised logits, log_softmax, gather, then the loss),
``torch_compile``, ``liger`` (chunked ``LigerFusedLinearGRPOLoss``) and ``sleepcore``
(``FusedLinearPolicyLoss``), GRPO, forward+backward, on the same inputs.

Run ``python bench/bench_policy.py --case cpu``. TFLOP/s counts three logits-sized GEMMs,
``6*N*H*V`` (eager torch does three too; sleepcore's fused loss does exactly three).
"""

from __future__ import annotations

import torch

from sleepcore.benchmarks import driver
from sleepcore.benchmarks.driver import Benchmark
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


def loss_function(provider: str, options):
    from sleepcore import ops
    from sleepcore.losses import FusedLinearPolicyLoss

    def eager(hidden, weight, token_ids, old_logp, advantages, mask):
        logits = hidden @ weight.T
        logp = torch.log_softmax(logits.float(), -1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
        return ops.policy_loss(logp, old_logp, advantages, mask, loss_type="grpo")[0]

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
    return (f"GRPO policy loss, forward+backward: B={case.sequences} T={case.seq_len} (N={case.tokens}) "
            f"H={head.hidden} V={head.vocab} ({head.model}) {case.dtype}")


BENCHMARK = Benchmark("policy", "sleepcore.benchmarks.policy", POLICY_CASES, PROVIDERS, build_inputs, loss_function,
                      _flops, _describe)


def main(argv: list[str] | None = None) -> list[dict]:
    return driver.main(BENCHMARK, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
