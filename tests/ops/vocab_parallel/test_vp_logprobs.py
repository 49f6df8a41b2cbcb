"""ops.fused_linear_logprobs with the lm_head split over 2 gloo ranks equals the one-device op."""

import pytest
import torch

from _vp_cases import check_against_single, run_logprobs

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
