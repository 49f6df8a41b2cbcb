"""ops.fused_linear_policy_loss with the lm_head split over 2 gloo ranks equals the one-device op:
loss, metrics, hidden gradient and the weight and bias shards' gradients."""

import pytest
import torch

from _vp_cases import check_against_single, run_policy
from sleepcore import reference

V = 1271


def policy_inputs(B=5, T=9, H=24, vocab=V, *, bias=True):
    """Ragged masks (one full sequence, one with no kept token), targets on both shards."""
    hidden, weight = torch.randn(B, T, H), torch.randn(vocab, H) / H**0.5 * 3
    token_ids = torch.randint(0, vocab, (B, T))
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0], lengths[-1] = T, 0
    mask = torch.arange(T)[None, :] < lengths[:, None]
    bias_tensor = torch.randn(vocab) if bias else None
    logp = reference.fused_linear_logprobs(hidden.reshape(-1, H), weight, token_ids.reshape(-1),
                                           bias=bias_tensor)[0].reshape(B, T)
    old_logp = logp + torch.randn(B, T) * 0.2
    inputs = dict(hidden=hidden, weight=weight, token_ids=token_ids, old_logp=old_logp, advantages=torch.randn(B),
                  mask=mask, ref_logp=logp + torch.randn(B, T) * 0.2, rollout_logp=old_logp + torch.randn(B, T) * 0.1)
    if bias:
        inputs["bias"] = bias_tensor
    return inputs


CASES = {
    "grpo": dict(loss_type="grpo", temperature=0.7),
    "grpo-seq-mean-token-sum": dict(loss_type="grpo", agg="seq-mean-token-sum", global_seqs=7),
    "dapo-entropy": dict(loss_type="dapo", entropy_coef=0.01),
    "dr_grpo-kl-tis": dict(loss_type="dr_grpo", kl_coef=0.1, kl_estimator="k2", tis_cap=2.0),
    "gspo-dual-clip": dict(loss_type="gspo", clip_ratio_c=3.0, eps_low=0.2, eps_high=0.3, temperature=2.0),
    "cispo-kl-entropy": dict(loss_type="cispo", kl_coef=0.05, entropy_coef=0.02),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_one_device(seed, ranks, case):
    inputs = policy_inputs()
    options = dict(CASES[case], chunk_size=18)  # two sequences per chunk
    if "kl_coef" not in options:
        del inputs["ref_logp"]
    if "tis_cap" not in options:
        del inputs["rollout_logp"]
    check_against_single(ranks, run_policy, inputs, (636, 635), options=options)


def test_uneven_shards_2d_advantages_global_counts(seed, ranks):
    inputs = policy_inputs(bias=False)
    inputs["advantages"] = torch.randn(5, 9)
    del inputs["ref_logp"], inputs["rollout_logp"]
    options = dict(loss_type="grpo", agg="token-mean", global_tokens=60)
    check_against_single(ranks, run_policy, inputs, (1000, 271), order=[1, 0], how="vocab_start", options=options)


def test_dtensor_weight(seed, ranks):
    inputs = policy_inputs()
    del inputs["ref_logp"], inputs["rollout_logp"]
    check_against_single(ranks, run_policy, inputs, (636, 635), how="dtensor", options=dict(loss_type="dapo"))


def test_triton_backend(seed, ranks):
    inputs = policy_inputs(B=3, T=4)
    del inputs["ref_logp"], inputs["rollout_logp"]
    options = dict(loss_type="dapo", entropy_coef=0.01, backend="triton")
    check_against_single(ranks, run_policy, inputs, (636, 635), options=options)
