"""ops.fused_linear_logprobs with the lm_head split over 2 gloo ranks equals the one-device op."""

import pytest
import torch

from _tolerance import assert_low_precision
from _vp_cases import check_against_single, parts, run_logprobs, sharded_job, whole

V = 1271


def logprobs_inputs(n=37, h=24, vocab=V, *, bias=True, targets=None):
    """Random inputs; ``targets`` (ids) replace the random token ids of the first rows."""
    ids = torch.randint(0, vocab, (n,)).masked_fill(torch.rand(n) < 0.2, -100)
    if targets is not None:
        ids[: len(targets)] = torch.tensor(targets)
    inputs = dict(hidden=torch.randn(n, h) * 3, weight=torch.randn(vocab, h) / h**0.5, token_ids=ids,
                  grad_logp=torch.randn(n), grad_entropy=torch.randn(n))
    if bias:
        inputs["bias"] = torch.randn(vocab)
    return inputs


@pytest.mark.parametrize("sizes", [(636, 635), (400, 871)])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_matches_one_device(seed, ranks, sizes, temperature):
    # targets at both shards' edges, and ignored rows
    inputs = logprobs_inputs(targets=[0, sizes[0] - 1, sizes[0], V - 1, -100])
    check_against_single(ranks, run_logprobs, inputs, sizes, options=dict(temperature=temperature, chunk_size=10))


def test_no_entropy_no_bias_shards_out_of_rank_order(seed, ranks):
    inputs = logprobs_inputs(bias=False)
    single = check_against_single(ranks, run_logprobs, inputs, (500, 771), order=[1, 0], how="vocab_start",
                                  options=dict(return_entropy=False))
    assert "entropy" not in single


def test_dtensor_weight(seed, ranks):
    check_against_single(ranks, run_logprobs, logprobs_inputs(), (636, 635), how="dtensor",
                         options=dict(temperature=0.7, chunk_size=8))


def test_every_token_ignored(seed, ranks):
    inputs = logprobs_inputs(n=6)
    inputs["token_ids"].fill_(-100)
    single = check_against_single(ranks, run_logprobs, inputs, (636, 635))
    assert torch.all(single["logp"] == 0) and torch.all(single["hidden"] == 0)


def plain_torch(inputs):
    """Log-probs, entropies and gradients by plain PyTorch in the inputs' dtype (the 16-bit rule's baseline)."""
    hidden, weight, ids = whole(inputs["hidden"]), whole(inputs["weight"]), inputs["token_ids"]
    logp_all = torch.log_softmax(hidden @ weight.T, -1)
    keep = ids != -100
    logp = logp_all.gather(-1, ids.clamp_min(0)[:, None])[:, 0] * keep
    entropy = -(logp_all.exp() * logp_all).sum(-1) * keep
    total = (logp.float() * inputs["grad_logp"]).sum() + (entropy.float() * inputs["grad_entropy"]).sum()
    grad_hidden, grad_weight = torch.autograd.grad(total, (hidden, weight))
    return dict(logp=logp, entropy=entropy, hidden=grad_hidden, weight=grad_weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(seed, ranks, dtype):
    """DESIGN.md's 16-bit rule on every rank: error vs the fp32 reference <= 2 x plain PyTorch's + 1e-2."""
    inputs = logprobs_inputs(n=33, h=64, bias=False, targets=[0, 635, 636, 1270])
    low = dict(inputs, hidden=inputs["hidden"].to(dtype), weight=inputs["weight"].to(dtype))
    sizes = (636, 635)
    results = ranks.run(sharded_job, run=run_logprobs, inputs=low, parts=parts(sizes), options={})
    reference = run_logprobs(inputs, whole, {})
    plain = plain_torch(low)
    for rank, (result, (start, stop)) in enumerate(zip(results, parts(sizes))):
        assert result["weight"].dtype == dtype
        for name in ("logp", "entropy", "hidden", "weight"):
            part = (lambda t: t[start:stop]) if name == "weight" else (lambda t: t)  # noqa: E731
            assert_low_precision(result[name], part(reference[name]), part(plain[name]), f"rank {rank} {name}")


def test_triton_backend(seed, ranks):
    """The Triton row kernels (under the interpreter on CPU) on shards, against the one-device op."""
    inputs = logprobs_inputs(n=12, targets=[0, 635, 636, 1270, -100])
    check_against_single(ranks, run_logprobs, inputs, (636, 635), options=dict(backend="triton", temperature=0.7))
