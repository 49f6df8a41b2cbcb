"""FusedLinearPolicyLoss (gradients in the forward pass) against fused_linear_logprobs + policy_loss."""

import pytest
import torch

from sleepcore import ops, reference
from sleepcore.losses import FusedLinearPolicyLoss
from _tolerance import assert_close_fp32

B, T, H, V = 5, 9, 24, 1271


def make_batch():
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = (torch.randn(V, H) / H**0.5 * 3).requires_grad_()
    token_ids = torch.randint(0, V, (B, T))
    lengths = torch.tensor([9, 4, 1, 7, 0])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    with torch.no_grad():
        logp = reference.fused_linear_logprobs(hidden.reshape(-1, H), weight, token_ids.reshape(-1))[0].reshape(B, T)
    old_logp = logp + torch.randn(B, T) * 0.2
    extras = dict(ref_logp=logp + torch.randn(B, T) * 0.2, rollout_logp=old_logp + torch.randn(B, T) * 0.1)
    return hidden, weight, token_ids, old_logp, torch.randn(B), mask, extras


OPTIONS = [
    ("grpo", {}), ("dapo", {}), ("dr_grpo", {}), ("gspo", {}), ("cispo", {}),
    ("grpo", dict(clip_ratio_c=3.0, kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01)),
    ("gspo", dict(kl_coef=0.05, kl_estimator="k2", tis_cap=2.0, agg="seq-mean-token-sum")),
    ("cispo", dict(kl_coef=0.05, kl_estimator="k1", tis_cap=1.5, entropy_coef=0.02)),
    ("dapo", dict(eps_low=0.1, eps_high=0.3, agg="seq-mean-token-sum-norm", temperature=0.7)),
]


@pytest.mark.parametrize("loss_type,options", OPTIONS)
def test_matches_primitive_plus_policy_loss(seed, loss_type, options):
    hidden, weight, token_ids, old_logp, advantages, mask, extras = make_batch()
    options = dict(options)
    temperature = options.pop("temperature", 1.0)
    kwargs = {k: v for k, v in extras.items() if (k == "ref_logp" and "kl_coef" in options) or
              (k == "rollout_logp" and "tis_cap" in options)}
    module = FusedLinearPolicyLoss(loss_type, temperature=temperature, chunk_size=2 * T, **options)
    loss, metrics = module(hidden, weight, token_ids, old_logp, advantages, mask, **kwargs)
    logp, entropy = ops.fused_linear_logprobs(hidden, weight, token_ids, temperature=temperature)
    expected, expected_metrics = ops.policy_loss(logp, old_logp, advantages, mask, loss_type=loss_type,
                                                 entropy=entropy, **options, **kwargs)
    assert_close_fp32(loss, expected, "loss")
    for a, b in zip(torch.autograd.grad(loss * 1.7, (hidden, weight)), torch.autograd.grad(expected * 1.7, (hidden, weight))):
        assert_close_fp32(a, b, "grad")
    for name in expected_metrics:
        assert_close_fp32(metrics[name], expected_metrics[name], name)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "gspo", "cispo"])
def test_micro_batches_sum_to_the_batch(seed, loss_type):
    hidden, weight, token_ids, old_logp, advantages, mask, _ = make_batch()
    module = FusedLinearPolicyLoss(loss_type)
    full, _ = module(hidden, weight, token_ids, old_logp, advantages, mask)
    full_grads = torch.autograd.grad(full, (hidden, weight))
    totals = dict(global_tokens=mask.sum(), global_seqs=B, max_len=T)
    hidden_parts, weight_sum, loss_sum = [], 0, 0
    for part in (slice(0, 2), slice(2, 3), slice(3, 5)):
        micro_hidden = hidden[part].detach().requires_grad_()
        loss, _ = module(micro_hidden, weight, token_ids[part], old_logp[part], advantages[part], mask[part], **totals)
        grad_hidden, grad_weight = torch.autograd.grad(loss, (micro_hidden, weight))
        hidden_parts.append(grad_hidden)
        weight_sum, loss_sum = weight_sum + grad_weight, loss_sum + loss
    assert_close_fp32(loss_sum, full, "loss")
    assert_close_fp32(torch.cat(hidden_parts), full_grads[0], "grad_hidden")
    assert_close_fp32(weight_sum, full_grads[1], "grad_weight")


def test_opcheck_compile_and_triton(seed):
    hidden, weight, token_ids, old_logp, advantages, mask, _ = make_batch()
    module = FusedLinearPolicyLoss("grpo", entropy_coef=0.01)
    eager, _ = module(hidden, weight, token_ids, old_logp, advantages, mask)
    compiled = torch.compile(lambda *a: module(*a)[0], fullgraph=True)(hidden, weight, token_ids, old_logp,
                                                                     advantages, mask)
    torch.testing.assert_close(compiled, eager)
    triton, _ = FusedLinearPolicyLoss("grpo", entropy_coef=0.01, backend="triton")(hidden, weight, token_ids, old_logp,
                                                                                   advantages, mask)
    assert_close_fp32(triton, eager, "triton loss")
    for a, b in zip(torch.autograd.grad(triton, (hidden, weight)), torch.autograd.grad(eager, (hidden, weight))):
        assert_close_fp32(a, b, "triton grad")
    ids = torch.where(mask, token_ids, -1).reshape(-1)
    weights = mask.float() / mask.sum()
    torch.library.opcheck(torch.ops.sleepcore.fused_linear_policy_loss.default,
                          (hidden.reshape(-1, H), weight, None, ids, old_logp, advantages, mask, weights, None, None,
                           1.0, 18, "auto", "grpo", 0.2, 0.2, None, 0.0, "k3", 0.0, None, True, True, False))


def test_bad_inputs(seed):
    hidden, weight, token_ids, old_logp, advantages, mask, _ = make_batch()
    with pytest.raises(ValueError, match="loss_type"):
        FusedLinearPolicyLoss("ppo2")
    with pytest.raises(ValueError, match="token_ids"):
        FusedLinearPolicyLoss()(hidden, weight, token_ids[:, :3], old_logp, advantages, mask)
    with pytest.raises(ValueError, match="advantages"):
        FusedLinearPolicyLoss()(hidden, weight, token_ids, old_logp, advantages[:3], mask)
    with pytest.raises(ValueError, match="hidden"):
        FusedLinearPolicyLoss()(hidden[0], weight, token_ids, old_logp, advantages, mask)
