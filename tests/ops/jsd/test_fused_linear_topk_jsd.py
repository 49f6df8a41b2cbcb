"""sleepcore.ops.fused_linear_topk_jsd: k + 1 bins against the reference, and k = V against the full op."""

import pytest
import torch

from sleepcore import ops, reference
from _tolerance import assert_close_fp32


def make_inputs(n, h, v, k, temperature=1.0):
    hidden = torch.randn(n, h, requires_grad=True)
    weight = (torch.randn(v, h) / h**0.5).requires_grad_()
    teacher_logits = torch.randn(n, v) * 2
    teacher_logp = torch.log_softmax(teacher_logits / temperature, -1)
    topk = teacher_logp.topk(k, dim=-1)
    labels = torch.randint(0, v, (n,)).masked_fill(torch.rand(n) < 0.2, -100)
    return hidden, weight, topk.indices, topk.values, labels, teacher_logits


def grads(loss, *tensors, grad_output=None):
    return torch.autograd.grad(loss, tensors, grad_output)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_matches_reference(seed, beta, k):
    hidden, weight, ids, logprobs, labels, _ = make_inputs(37, 61, 1271, k, temperature=2.0)
    kwargs = dict(beta=beta, temperature=2.0)
    expected = reference.fused_linear_topk_jsd(hidden, weight, ids, logprobs, labels, **kwargs)
    actual = ops.fused_linear_topk_jsd(hidden, weight, ids, logprobs, labels, chunk_size=10, **kwargs)
    grad_output = torch.tensor(2.5)
    assert_close_fp32(actual, expected, "loss")
    for got, want in zip(grads(actual, hidden, weight, grad_output=grad_output),
                         grads(expected, hidden, weight, grad_output=grad_output)):
        assert_close_fp32(got, want, "grad")


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_bias_and_int32_ids(seed, reduction):
    hidden, weight, ids, logprobs, labels, _ = make_inputs(20, 16, 200, 5)
    bias = torch.randn(200, requires_grad=True)
    kwargs = dict(beta=0.4, temperature=0.5, reduction=reduction, student_bias=bias)
    expected = reference.fused_linear_topk_jsd(hidden, weight, ids, logprobs, labels, **kwargs)
    actual = ops.fused_linear_topk_jsd(hidden, weight, ids.int(), logprobs, labels, **kwargs)
    grad_output = torch.randn_like(actual)
    assert_close_fp32(actual, expected, "loss")
    for got, want in zip(grads(actual, hidden, weight, bias, grad_output=grad_output),
                         grads(expected, hidden, weight, bias, grad_output=grad_output)):
        assert_close_fp32(got, want, "grad")


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_k_equal_v_reduces_to_full_op(seed, beta):
    v, temperature = 97, 1.5
    hidden, weight, ids, logprobs, labels, teacher_logits = make_inputs(16, 12, v, v, temperature)
    full = ops.generalized_jsd(hidden @ weight.T, teacher_logits, labels, beta=beta, temperature=temperature)
    topk = ops.fused_linear_topk_jsd(hidden, weight, ids, logprobs, labels, beta=beta, temperature=temperature)
    assert_close_fp32(topk, full, "loss")
    for got, want in zip(grads(topk, hidden, weight), grads(full, hidden, weight)):
        assert_close_fp32(got, want, "grad")


def test_out_of_range_ids_raise_on_cpu(seed):
    hidden, weight, ids, logprobs, labels, _ = make_inputs(4, 8, 30, 3)
    ids[2, 1] = 30
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        ops.fused_linear_topk_jsd(hidden, weight, ids, logprobs, labels)
