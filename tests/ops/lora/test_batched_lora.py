"""sleepcore.ops.batched_lora against the per-adapter fp32 reference, on both backends (Triton under
the interpreter on CPU), with odd shapes, empty adapters, -1 rows, low precision, strides, bad input,
opcheck and torch.compile."""

import pytest
import torch

from sleepcore import ops, reference
from _tolerance import assert_close_fp32, assert_low_precision

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["cpu", "triton"] if DEVICE == "cpu" else ["auto"]


def make(n=45, d_in=37, d_out=61, rank=3, adapters=5, dtype=torch.float32):
    """Inputs with uneven segments, adapter 2 without rows, -1 rows, and rows not sorted by adapter."""
    x = torch.randn(n, d_in, device=DEVICE).to(dtype).requires_grad_()
    A = (torch.randn(adapters, rank, d_in, device=DEVICE) / d_in**0.5).to(dtype).requires_grad_()
    B = torch.randn(adapters, d_out, rank, device=DEVICE).to(dtype).requires_grad_()
    weights = torch.tensor([0.5, 3.0, 0.0, 1.0, 6.0][:adapters] + [1.0] * max(0, adapters - 5))
    index = torch.multinomial(weights, n, replacement=True)
    index[torch.rand(n) < 0.15] = -1
    return x, A, B, index.to(DEVICE)


def grads(y, inputs, grad_output):
    return torch.autograd.grad(y, inputs, grad_output)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [dict(), dict(n=70, d_in=64, d_out=48, rank=16, adapters=3),
                                   dict(n=9, d_in=8, d_out=5, rank=1, adapters=1), dict(rank=33, adapters=2)])
def test_matches_reference(seed, backend, shape):
    x, A, B, index = make(**shape)
    y = ops.batched_lora(x, A, B, index, 0.7, backend=backend)
    expected = reference.batched_lora(x, A, B, index, 0.7)
    assert_close_fp32(y, expected, "y")
    assert torch.all(y[index == -1] == 0)
    grad_output = torch.randn_like(y)
    got = grads(y, (x, A, B), grad_output)
    for name, actual, want in zip("xAB", got, grads(expected, (x, A, B), grad_output)):
        assert_close_fp32(actual, want, f"grad_{name}", accumulated=name != "x")
    empty = [k for k in range(A.shape[0]) if not (index == k).any()]
    assert empty or shape, "the default shape has an adapter without rows"
    for name, grad in zip("AB", got[1:]):
        assert torch.all(grad[empty] == 0), f"grad_{name} of an adapter without rows"


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_gradients_and_edge_indices(seed, backend):
    x, A, B, index = make()
    y = ops.batched_lora(x.detach(), A, B.detach(), index, -1.5, backend=backend)
    want = reference.batched_lora(x, A, B, index, -1.5)
    grad_output = torch.randn_like(y)
    assert_close_fp32(grads(y, A, grad_output)[0], grads(want, A, grad_output)[0], "grad_A", accumulated=True)
    nobody = torch.full_like(index, -1)
    y = ops.batched_lora(x, A, B, nobody, 1.0, backend=backend)
    assert torch.all(y == 0)
    assert all(torch.all(g == 0) for g in grads(y, (x, A, B), torch.randn_like(y)))
    assert ops.batched_lora(x[:0], A, B, index[:0], backend=backend).shape == (0, B.shape[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(seed, backend, dtype):
    x, A, B, index = make(n=40, d_in=48, d_out=40, rank=8, adapters=3)
    low = [t.detach().to(dtype).requires_grad_() for t in (x, A, B)]
    y = ops.batched_lora(*low, index, 0.5, backend=backend)
    assert y.dtype == dtype
    expected = reference.batched_lora(x, A, B, index, 0.5)
    plain = torch.zeros_like(y)
    for k in range(A.shape[0]):
        plain = torch.where((index == k)[:, None], 0.5 * (low[0] @ low[1][k].T) @ low[2][k].T, plain)
    assert_low_precision(y, expected, plain, "y")
    grad_output = torch.randn_like(expected)
    wants = grads(expected, (x, A, B), grad_output)
    plains = grads(plain, low, grad_output.to(dtype))
    for name, got, want, base in zip("xAB", grads(y, low, grad_output.to(dtype)), wants, plains):
        assert got.dtype == dtype
        assert_low_precision(got, want, base, f"grad_{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(seed, backend):
    x, A, B, index = make(n=30, d_in=16, d_out=24, rank=4, adapters=3)
    x_t = x.detach().T.contiguous().T.requires_grad_()  # column-major
    A_t = A.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    B_view = torch.randn(3, 24, 8, device=DEVICE)[:, :, ::2].requires_grad_()  # strided rank dimension
    index_view = torch.stack([index, index], 1)[:, 0]
    y = ops.batched_lora(x_t, A_t, B_view, index_view, 2.0, backend=backend)
    expected = reference.batched_lora(x_t, A_t, B_view, index, 2.0)
    assert_close_fp32(y, expected, "y")
    grad_output = torch.randn_like(y)
    for got, want in zip(grads(y, (x_t, A_t, B_view), grad_output), grads(expected, (x_t, A_t, B_view), grad_output)):
        assert_close_fp32(got, want, "grad", accumulated=True)


BAD = [
    ("^x", TypeError, lambda x, A, B, i: dict(x=x.detach().long())),
    ("^x", ValueError, lambda x, A, B, i: dict(x=x[0])),
    ("^A", ValueError, lambda x, A, B, i: dict(A=A[0])),
    ("^B", ValueError, lambda x, A, B, i: dict(B=B[:2])),
    ("^B", ValueError, lambda x, A, B, i: dict(B=B[:, :, :2])),
    ("d_in", ValueError, lambda x, A, B, i: dict(x=x[:, :5])),
    ("K >= 1", ValueError, lambda x, A, B, i: dict(A=A[:0], B=B[:0])),
    ("share one dtype", TypeError, lambda x, A, B, i: dict(A=A.detach().half())),
    ("one device", ValueError, lambda x, A, B, i: dict(adapter_index=i.to("meta"))),
    ("^adapter_index", TypeError, lambda x, A, B, i: dict(adapter_index=i.float())),
    ("^adapter_index", ValueError, lambda x, A, B, i: dict(adapter_index=i[:4])),
    ("^adapter_index values", ValueError, lambda x, A, B, i: dict(adapter_index=torch.full_like(i, 5))),
    ("^adapter_index values", ValueError, lambda x, A, B, i: dict(adapter_index=torch.full_like(i, -2))),
    ("^scale", ValueError, lambda x, A, B, i: dict(scale=float("inf"))),
    ("^scale", TypeError, lambda x, A, B, i: dict(scale="1")),
    ("^backend", ValueError, lambda x, A, B, i: dict(backend="gpu")),
]


@pytest.mark.skipif(DEVICE != "cpu", reason="index values are checked on CPU only")
@pytest.mark.parametrize("match,error,change", BAD, ids=[f"{i}-{m}" for i, (m, _, _) in enumerate(BAD)])
def test_rejects_bad_input(match, error, change):
    x, A, B, index = make()
    kwargs = dict(x=x, A=A, B=B, adapter_index=index, scale=1.0)
    kwargs.update(change(x, A, B, index))
    with pytest.raises(error, match=match):
        ops.batched_lora(**kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_compile(seed, backend):
    x, A, B, index = make(n=20, d_in=12, d_out=10, rank=2, adapters=3)
    torch.library.opcheck(torch.ops.sleepcore.batched_lora.default, (x, A, B, index, 0.5, backend))
    torch.library.opcheck(torch.ops.sleepcore.batched_lora_backward.default,
                          (torch.randn(20, 10, device=DEVICE), x.detach(), A.detach(), B.detach(), index, 0.5, backend,
                           True, True, False))

    def fn(x, A, B):
        return (ops.batched_lora(x, A, B, index, 0.5, backend=backend) ** 2).sum()

    eager = fn(x, A, B)
    compiled = torch.compile(fn, fullgraph=True)(x, A, B)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(torch.autograd.grad(compiled, (x, A, B)), torch.autograd.grad(eager, (x, A, B))):
        torch.testing.assert_close(got, want)
