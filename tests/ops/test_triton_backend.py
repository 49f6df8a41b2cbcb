"""The public ops with ``backend="triton"``: the CUDA code path (chunk loop + Triton kernels), run
under the Triton interpreter on CPU (or on the GPU when there is one), against the reference."""

import pytest
import torch

from sleepcore import ops, reference
from _tolerance import assert_close_fp32

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("beta,reduction", [(0.0, "sum"), (0.5, "batchmean"), (1.0, "none")])
def test_fused_linear_jsd_triton(seed, beta, reduction):
    sh = torch.randn(11, 16, device=DEVICE, requires_grad=True)
    sw = torch.randn(131, 16, device=DEVICE, requires_grad=True)
    sb = torch.randn(131, device=DEVICE, requires_grad=True)
    th, tw = torch.randn(11, 12, device=DEVICE), torch.randn(131, 12, device=DEVICE)
    labels = torch.tensor([1, 2, -100, 4, 5, 6, -100, 8, 9, 10, 11], device=DEVICE)
    kwargs = dict(beta=beta, temperature=1.5, reduction=reduction, student_bias=sb)
    expected = reference.fused_linear_jsd(sh, sw, th, tw, labels, **kwargs)
    actual = ops.fused_linear_jsd(sh, sw, th, tw, labels, chunk_size=4, backend="triton", **kwargs)
    grad_output = torch.randn_like(actual)
    assert_close_fp32(actual, expected, "loss")
    for got, want in zip(torch.autograd.grad(actual, (sh, sw, sb), grad_output),
                         torch.autograd.grad(expected, (sh, sw, sb), grad_output)):
        assert_close_fp32(got, want, "grad")


def test_topk_and_generalized_triton(seed):
    sh = torch.randn(7, 8, device=DEVICE, requires_grad=True)
    sw = torch.randn(97, 8, device=DEVICE, requires_grad=True)
    teacher_logits = torch.randn(7, 97, device=DEVICE)
    top = torch.log_softmax(teacher_logits, -1).topk(5, -1)
    expected = reference.fused_linear_topk_jsd(sh, sw, top.indices, top.values, beta=0.3)
    actual = ops.fused_linear_topk_jsd(sh, sw, top.indices, top.values, beta=0.3, chunk_size=3, backend="triton")
    assert_close_fp32(actual, expected, "topk loss")
    for got, want in zip(torch.autograd.grad(actual, (sh, sw)), torch.autograd.grad(expected, (sh, sw))):
        assert_close_fp32(got, want, "topk grad")
    logits = (sh @ sw.T).detach().requires_grad_()
    expected = reference.generalized_jsd(logits, teacher_logits, beta=0.7)
    actual = ops.generalized_jsd(logits, teacher_logits, beta=0.7, backend="triton")
    assert_close_fp32(actual, expected, "logits loss")
    assert_close_fp32(torch.autograd.grad(actual, logits)[0], torch.autograd.grad(expected, logits)[0], "logits grad")
