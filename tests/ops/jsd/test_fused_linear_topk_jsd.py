"""sleepcore.ops.fused_linear_topk_jsd: k + 1 bins against the reference, and k = V against the full op."""

import pytest
import torch

from sleepcore import ops, reference
from sleepcore.reference.distill import REST_LOG_FLOOR, jsd_from_logprobs
from _tolerance import assert_close_fp32, assert_low_precision


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


def plain_topk_jsd(hidden, weight, bias, ids, logprobs, labels, beta, temperature):
    """Plain PyTorch with the student in its own dtype (the 16-bit rule's baseline): 16-bit logits,
    log-normaliser and k + 1 student bins; the stored teacher's log-probs stay float32. ``"sum"``
    reduction (gradients of order 1, where the rule's 1e-2 does not hide every error)."""
    z = (hidden @ weight.T + bias) / temperature
    log_normaliser = torch.logsumexp(z, -1, keepdim=True)
    rest = torch.logsumexp(z.scatter(-1, ids, float("-inf")), -1, keepdim=True) - log_normaliser
    student = torch.cat([z.gather(-1, ids) - log_normaliser, rest.clamp_min(REST_LOG_FLOOR)], -1)
    teacher_rest = (1 - logprobs.exp().sum(-1, keepdim=True)).clamp_min(0).log().clamp_min(REST_LOG_FLOOR)
    per_token = jsd_from_logprobs(student, torch.cat([logprobs, teacher_rest], -1), beta)
    return (per_token * (labels != -100)).sum()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_rule(seed, dtype):
    hidden, weight, ids, logprobs, labels, _ = make_inputs(33, 64, 777, 16, temperature=0.7)
    bias = torch.randn(777, requires_grad=True)
    kwargs = dict(beta=0.5, temperature=0.7)
    expected = reference.fused_linear_topk_jsd(hidden, weight, ids, logprobs, labels, student_bias=bias,
                                               reduction="sum", **kwargs)
    low = [t.detach().to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    plain = plain_topk_jsd(*low, ids, logprobs, labels, **kwargs)
    actual = ops.fused_linear_topk_jsd(low[0], low[1], ids, logprobs, labels, student_bias=low[2], chunk_size=8,
                                       reduction="sum", **kwargs)
    grad_output = torch.tensor(2.5)
    assert actual.dtype == torch.float32
    assert_low_precision(actual, expected, plain, "loss")
    got = grads(actual, *low, grad_output=grad_output)
    assert [g.dtype for g in got] == [dtype] * 3
    for name, g, want, base in zip(("grad_hidden", "grad_weight", "grad_bias"), got,
                                   grads(expected, hidden, weight, bias, grad_output=grad_output),
                                   grads(plain, *low, grad_output=grad_output)):
        assert_low_precision(g, want, base, name)


def test_out_of_range_ids_raise_on_cpu(seed):
    hidden, weight, ids, logprobs, labels, _ = make_inputs(4, 8, 30, 3)
    ids[2, 1] = 30
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        ops.fused_linear_topk_jsd(hidden, weight, ids, logprobs, labels)
