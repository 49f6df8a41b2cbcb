"""fused_linear_logprobs and FusedLinearPolicyLoss on a real GPU, against the fp32 references.

Marked ``cuda``: skipped without a usable GPU; run by bench/gpu_check.sh on a GPU machine.
"""

import pytest
import torch

from sleepcore import ops, reference
from sleepcore.losses import FusedLinearPolicyLoss
from _tolerance import assert_close_fp32

pytestmark = pytest.mark.cuda


def test_logprobs_fp32_and_batch_invariance(seed):
    torch.backends.cuda.matmul.allow_tf32 = False
    hidden = torch.randn(1037, 256, device="cuda", requires_grad=True)
    weight = (torch.randn(32011, 256, device="cuda") / 16).requires_grad_()
    ids = torch.randint(0, 32011, (1037,), device="cuda")
    logp, entropy = ops.fused_linear_logprobs(hidden, weight, ids, temperature=0.8, chunk_size=300)
    ref_logp, ref_entropy = reference.fused_linear_logprobs(hidden, weight, ids, temperature=0.8)
    assert_close_fp32(logp, ref_logp, "logp")
    assert_close_fp32(entropy, ref_entropy, "entropy")
    got = torch.autograd.grad(logp.sum() + 0.1 * entropy.sum(), (hidden, weight))
    want = torch.autograd.grad(ref_logp.sum() + 0.1 * ref_entropy.sum(), (hidden, weight))
    for a, b in zip(got, want):
        assert_close_fp32(a, b, "grad")


def test_policy_loss_bf16_runs_and_agrees(seed):
    B, T, H, V = 4, 256, 512, 50257
    hidden = torch.randn(B, T, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(V, H, device="cuda") / H**0.5).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, V, (B, T), device="cuda")
    mask = torch.rand(B, T, device="cuda") > 0.1
    old = -torch.rand(B, T, device="cuda") * 2 - 10
    advantages = torch.randn(B, device="cuda")
    loss, _ = FusedLinearPolicyLoss("grpo")(hidden, weight, ids, old, advantages, mask)
    ref_logp, _ = reference.fused_linear_logprobs(hidden.reshape(-1, H), weight, ids.reshape(-1))
    expected, _ = ops.policy_loss(ref_logp.reshape(B, T), old, advantages, mask)
    torch.testing.assert_close(loss, expected, atol=2e-2, rtol=2e-2)
