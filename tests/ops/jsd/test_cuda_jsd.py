"""The distillation ops on a real GPU (Triton kernels, cuBLAS chunks), against the fp32 reference.

Marked ``cuda``: skipped without a usable GPU; run by bench/gpu_check.sh on a GPU machine.
"""

import pytest
import torch

from sleepcore import ops, reference
from _tolerance import assert_close_fp32, assert_low_precision

pytestmark = pytest.mark.cuda


def inputs(n, h, v, dtype):
    sh = torch.randn(n, h, device="cuda", dtype=dtype, requires_grad=True)
    sw = (torch.randn(v, h, device="cuda") / h**0.5).to(dtype).requires_grad_()
    th = torch.randn(n, h + 16, device="cuda", dtype=dtype)
    tw = (torch.randn(v, h + 16, device="cuda") / h**0.5).to(dtype)
    labels = torch.randint(0, v, (n,), device="cuda").masked_fill(torch.rand(n, device="cuda") < 0.2, -100)
    return sh, sw, th, tw, labels


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_fused_linear_jsd_fp32(seed, beta):
    sh, sw, th, tw, labels = inputs(1037, 256, 32011, torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    expected = reference.fused_linear_jsd(sh, sw, th, tw, labels, beta=beta, temperature=0.8)
    actual = ops.fused_linear_jsd(sh, sw, th, tw, labels, beta=beta, temperature=0.8, chunk_size=300)
    assert_close_fp32(actual, expected, "loss")
    for got, want in zip(torch.autograd.grad(actual * 1.3, (sh, sw)), torch.autograd.grad(expected * 1.3, (sh, sw))):
        assert_close_fp32(got, want, "grad")


def test_fused_linear_jsd_bf16_error_rule(seed):
    sh, sw, th, tw, labels = inputs(2048, 512, 50257, torch.bfloat16)
    expected = reference.fused_linear_jsd(sh, sw, th, tw, labels)
    plain = reference.fused_linear_jsd(sh, sw, th, tw, labels, upcast=False)
    actual = ops.fused_linear_jsd(sh, sw, th, tw, labels)
    assert_low_precision(actual, expected, plain, "loss")
    for got, want, base in zip(torch.autograd.grad(actual, (sh, sw)), torch.autograd.grad(expected, (sh, sw)),
                               torch.autograd.grad(plain, (sh, sw))):
        assert_low_precision(got, want, base, "grad")


def test_topk_and_generalized_on_gpu(seed):
    sh, sw, th, tw, labels = inputs(300, 128, 9973, torch.float32)
    teacher = torch.log_softmax(th @ tw.T, -1).topk(20, -1)
    expected = reference.fused_linear_topk_jsd(sh, sw, teacher.indices, teacher.values, labels, beta=0.3)
    actual = ops.fused_linear_topk_jsd(sh, sw, teacher.indices, teacher.values, labels, beta=0.3)
    assert_close_fp32(actual, expected, "topk loss")
    logits = (sh @ sw.T).detach().requires_grad_()
    assert_close_fp32(ops.generalized_jsd(logits, th @ tw.T, labels), reference.generalized_jsd(logits, th @ tw.T, labels))


def test_opcheck_and_compile_on_gpu(seed):
    sh, sw, th, tw, labels = inputs(64, 32, 1000, torch.float32)
    scale = torch.rand(64, device="cuda")
    torch.library.opcheck(torch.ops.sleepcore.fused_linear_jsd.default,
                          (sh, sw, th, tw, scale, None, None, 0.5, 1.0, 16, "auto", True, True, False))
    fn = lambda *a: ops.fused_linear_jsd(*a, labels)  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(sh, sw, th, tw), fn(sh, sw, th, tw))
