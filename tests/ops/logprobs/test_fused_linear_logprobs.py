"""sleepcore.ops.fused_linear_logprobs against log_softmax(...).gather and its entropy."""

import pytest
import torch

from sleepcore import ops, reference
from _tolerance import assert_close_fp32, assert_low_precision


def make(n, h, v, dtype=torch.float32, scale=1.0):
    hidden = (torch.randn(n, h) * scale).to(dtype).requires_grad_()
    weight = (torch.randn(v, h) / h**0.5).to(dtype).requires_grad_()
    ids = torch.randint(0, v, (n,)).masked_fill(torch.rand(n) < 0.2, -100)
    return hidden, weight, ids


@pytest.mark.parametrize("vocab", [1271, 8120])  # 8120 = 129920 / 16: odd sizes that broke verl's kernel
@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_matches_reference_with_grad_outputs(seed, vocab, temperature):
    hidden, weight, ids = make(37, 61, vocab, scale=3.0)
    bias = torch.randn(vocab, requires_grad=True)
    logp, entropy = ops.fused_linear_logprobs(hidden, weight, ids, temperature=temperature, bias=bias, chunk_size=10)
    ref_logp, ref_entropy = reference.fused_linear_logprobs(hidden, weight, ids, temperature=temperature, bias=bias)
    assert_close_fp32(logp, ref_logp, "logp")
    assert_close_fp32(entropy, ref_entropy, "entropy")
    g_logp, g_entropy = torch.randn(37), torch.randn(37)
    got = torch.autograd.grad((logp * g_logp).sum() + (entropy * g_entropy).sum(), (hidden, weight, bias))
    want = torch.autograd.grad((ref_logp * g_logp).sum() + (ref_entropy * g_entropy).sum(), (hidden, weight, bias))
    for name, a, b in zip(("hidden", "weight", "bias"), got, want):
        assert_close_fp32(a, b, f"grad_{name}", accumulated=name == "weight")  # weight: a sum over 37 rows
    assert torch.all(logp <= 0) and torch.all(entropy >= 0)
    assert torch.all(logp[ids == -100] == 0) and torch.all(entropy[ids == -100] == 0)


def test_batched_shape_and_no_entropy(seed):
    hidden, weight, ids = make(2 * 13, 16, 300)
    logp, entropy = ops.fused_linear_logprobs(hidden.reshape(2, 13, 16), weight, ids.reshape(2, 13),
                                              return_entropy=False)
    assert entropy is None and logp.shape == (2, 13)
    assert_close_fp32(logp.reshape(-1), reference.fused_linear_logprobs(hidden, weight, ids)[0])
    grad, = torch.autograd.grad(logp.sum(), weight)
    assert_close_fp32(grad, torch.autograd.grad(reference.fused_linear_logprobs(hidden, weight, ids)[0].sum(), weight)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(seed, dtype):
    hidden, weight, ids = make(33, 64, 1271)
    low_hidden, low_weight = hidden.detach().to(dtype).requires_grad_(), weight.detach().to(dtype).requires_grad_()
    logp, entropy = ops.fused_linear_logprobs(low_hidden, low_weight, ids)
    ref_logp, ref_entropy = reference.fused_linear_logprobs(hidden, weight, ids)
    logits = low_hidden @ low_weight.T
    plain_logp = torch.log_softmax(logits, -1).gather(-1, ids.clamp_min(0)[:, None])[:, 0].masked_fill(ids == -100, 0)
    assert_low_precision(logp, ref_logp, plain_logp, "logp")
    got, = torch.autograd.grad(logp.sum(), low_weight)
    want, = torch.autograd.grad(ref_logp.sum(), weight)
    plain, = torch.autograd.grad(plain_logp.float().sum(), low_weight)
    assert got.dtype == dtype
    assert_low_precision(got, want, plain, "grad_weight")


def test_row_results_do_not_depend_on_batch_or_chunk(seed):
    hidden, weight, ids = make(70, 48, 999)
    ids = ids.clamp_min(0)
    full = ops.fused_linear_logprobs(hidden, weight, ids, chunk_size=64)
    for chunk in (1, 7, 70):
        other = ops.fused_linear_logprobs(hidden, weight, ids, chunk_size=chunk)
        assert torch.equal(other[0], full[0]) and torch.equal(other[1], full[1])
    for rows in (slice(5, 6), slice(3, 10), slice(40, 70)):
        alone = ops.fused_linear_logprobs(hidden[rows], weight, ids[rows])
        assert torch.equal(alone[0], full[0][rows]) and torch.equal(alone[1], full[1][rows])


def test_bad_inputs():
    hidden, weight, ids = make(4, 8, 30)
    with pytest.raises(ValueError, match="token_ids"):
        ops.fused_linear_logprobs(hidden, weight, ids[:3])
    with pytest.raises(TypeError, match="token_ids"):
        ops.fused_linear_logprobs(hidden, weight, ids.float())
    with pytest.raises(ValueError, match="temperature"):
        ops.fused_linear_logprobs(hidden, weight, ids, temperature=0)
    with pytest.raises(ValueError, match="out of range"):
        ops.fused_linear_logprobs(hidden, weight, torch.tensor([1, 2, 30, 4]))


def test_opcheck_and_compile(seed):
    hidden, weight, ids = make(9, 8, 40)
    flat_ids = ids.clamp_min(-1)
    torch.library.opcheck(torch.ops.sleepcore.fused_linear_logprobs.default,
                          (hidden, weight, flat_ids, None, 0.9, 4, "auto", True))
    torch.library.opcheck(torch.ops.sleepcore.fused_linear_logprobs_backward.default,
                          (torch.randn(9), torch.randn(9), hidden.detach(), weight.detach(), flat_ids, None,
                           torch.randn(9).abs(),
                           torch.rand(9), 0.9, 4, "auto", True, True, False))

    def fn(hidden, weight):
        logp, entropy = ops.fused_linear_logprobs(hidden, weight, ids, temperature=0.9)
        return logp.sum() + 0.1 * entropy.sum()

    eager = fn(hidden, weight)
    compiled = torch.compile(fn, fullgraph=True)(hidden, weight)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(torch.autograd.grad(compiled, (hidden, weight)), torch.autograd.grad(eager, (hidden, weight))):
        torch.testing.assert_close(a, b)


def test_triton_backend(seed):
    hidden, weight, ids = make(11, 16, 131)
    logp, entropy = ops.fused_linear_logprobs(hidden, weight, ids, temperature=1.3, chunk_size=4, backend="triton")
    ref_logp, ref_entropy = reference.fused_linear_logprobs(hidden, weight, ids, temperature=1.3)
    assert_close_fp32(logp, ref_logp, "logp")
    assert_close_fp32(entropy, ref_entropy, "entropy")
    got = torch.autograd.grad(logp.sum() - entropy.sum(), (hidden, weight))
    want = torch.autograd.grad(ref_logp.sum() - ref_entropy.sum(), (hidden, weight))
    for a, b in zip(got, want):
        assert_close_fp32(a, b, "grad")
