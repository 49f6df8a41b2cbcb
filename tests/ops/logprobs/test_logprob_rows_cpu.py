"""sleepcore._C.logprob_rows / logprob_grad_rows (the CPU per-row kernels), called directly.

Values and gradients against the fp32 reference (sleepcore.reference.logprobs and autograd through it),
16-bit storage, ignored rows, masked (-inf) logits, aliasing, row strides, bad ids, and bitwise determinism.
"""

import pytest
import torch

from sleepcore._core import _C, address, dtype_code
from sleepcore.reference.logprobs import logprobs_from_logits
from _tolerance import assert_close_fp32

IGNORE = -100


def forward(logits, ids, temperature=1.0, *, entropy=True, threads=2):
    """(logp, entropy or None, lse) of each row of a [rows, vocab] logits view."""
    rows, vocab = logits.shape
    logp, lse = torch.empty(rows), torch.empty(rows)
    ent = torch.empty(rows) if entropy else None
    _C.logprob_rows(address(logits), logits.stride(0), dtype_code(logits), rows, vocab, address(ids), temperature,
                    address(logp), address(ent), address(lse), threads)
    return logp, ent, lse


def backward(logits, ids, lse, entropy, grad_logp, grad_entropy=None, temperature=1.0, *, out=None, threads=2):
    """d(sum grad_logp * logp + grad_entropy * entropy) / d logits, written into out (default: a new tensor)."""
    rows, vocab = logits.shape
    grad = torch.empty_like(logits) if out is None else out
    _C.logprob_grad_rows(address(logits), logits.stride(0), address(grad), grad.stride(0), dtype_code(logits), rows,
                         vocab, address(ids), temperature, address(lse), address(entropy), address(grad_logp),
                         address(grad_entropy), threads)
    return grad


def reference(logits, ids, temperature, grad_logp, grad_entropy):
    """fp32 reference (logp, entropy, lse, grad); grad_entropy may be None."""
    x = logits.detach().float().requires_grad_()
    logp, entropy = logprobs_from_logits(x, ids, temperature=temperature, ignore_index=IGNORE)
    objective = (logp * grad_logp).sum() + (0 if grad_entropy is None else (entropy * grad_entropy).sum())
    (grad,) = torch.autograd.grad(objective, x)
    lse = torch.logsumexp(x.detach() / temperature, -1).masked_fill(ids == IGNORE, 0)
    return logp.detach(), entropy.detach(), lse, grad


def random_case(rows, vocab, std=1.0, dtype=torch.float32):
    logits = (torch.randn(rows, vocab) * std).to(dtype)
    ids = torch.randint(0, vocab, (rows,))
    ids[::5] = IGNORE
    return logits, ids, torch.randn(rows), torch.randn(rows)


@pytest.mark.parametrize("vocab", [1271, 8120])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
@pytest.mark.parametrize("std", [1.0, 5.0])
def test_matches_reference(seed, vocab, temperature, std):
    logits, ids, grad_logp, grad_entropy = random_case(12, vocab, std)
    logp, entropy, lse = forward(logits, ids, temperature)
    ref_logp, ref_entropy, ref_lse, ref_grad = reference(logits, ids, temperature, grad_logp, grad_entropy)
    assert_close_fp32(logp, ref_logp, "logp")
    assert_close_fp32(entropy, ref_entropy, "entropy")
    assert_close_fp32(lse, ref_lse, "lse")
    assert_close_fp32(backward(logits, ids, lse, entropy, grad_logp, grad_entropy, temperature), ref_grad, "grad")
    # Without the entropy term (grad_entropy = entropy = nullptr) and without the entropy output.
    *_, ref_grad_logp_only = reference(logits, ids, temperature, grad_logp, None)
    assert_close_fp32(backward(logits, ids, lse, None, grad_logp, None, temperature), ref_grad_logp_only, "grad")
    logp_only, none, lse_only = forward(logits, ids, temperature, entropy=False)
    assert none is None and torch.equal(logp_only, logp) and torch.equal(lse_only, lse)


@pytest.mark.parametrize("dtype, rtol", [(torch.bfloat16, 2**-8), (torch.float16, 2**-10)])
def test_low_precision_storage(seed, dtype, rtol):
    """16-bit logits: fp32 maths on the stored values; only the grad's rounding to dtype differs."""
    logits, ids, grad_logp, grad_entropy = random_case(9, 3001, 3.0, dtype)
    logp, entropy, lse = forward(logits, ids, 0.7)
    ref_logp, ref_entropy, ref_lse, ref_grad = reference(logits, ids, 0.7, grad_logp, grad_entropy)
    assert_close_fp32(logp, ref_logp, "logp")
    assert_close_fp32(entropy, ref_entropy, "entropy")
    assert_close_fp32(lse, ref_lse, "lse")
    grad = backward(logits, ids, lse, entropy, grad_logp, grad_entropy, 0.7)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.float(), ref_grad, atol=1e-5, rtol=rtol)


def test_ignored_rows_are_zero(seed):
    logits, _, grad_logp, grad_entropy = random_case(6, 517)
    ids = torch.tensor([3, -1, 0, 516, IGNORE, 100])
    logp, entropy, lse = forward(logits, ids)
    grad = backward(logits, ids, lse, entropy, grad_logp, grad_entropy, out=torch.full_like(logits, float("nan")))
    for out in (logp, entropy, lse):
        assert torch.all(out[[1, 4]] == 0) and torch.all(out[[0, 2, 3, 5]] != 0)
    assert torch.all(grad[[1, 4]] == 0) and torch.isfinite(grad).all()


def test_masked_logits(seed):
    """-inf logits (masked vocab entries, including the tail) take no mass: finite outputs, zero grad there."""
    vocab = 1000
    masked = torch.zeros(vocab, dtype=torch.bool)
    masked[torch.randperm(vocab)[:300]] = True
    masked[-9:] = True
    kept = (~masked).nonzero().squeeze(1)
    dense, _, grad_logp, grad_entropy = random_case(8, len(kept), 4.0)
    ids_dense = torch.randint(0, len(kept), (8,))
    logits = torch.full((8, vocab), float("-inf"))
    logits[:, kept] = dense
    ids = kept[ids_dense]
    logp, entropy, lse = forward(logits, ids, 0.7)
    grad = backward(logits, ids, lse, entropy, grad_logp, grad_entropy, 0.7)
    ref_logp, ref_entropy, ref_lse, ref_grad = reference(dense, ids_dense, 0.7, grad_logp, grad_entropy)
    assert_close_fp32(logp, ref_logp, "logp")
    assert_close_fp32(entropy, ref_entropy, "entropy")
    assert_close_fp32(lse, ref_lse, "lse")
    assert torch.all(grad[:, masked] == 0)
    assert_close_fp32(grad[:, kept], ref_grad, "grad")
    # A masked target: log p = -inf, everything else stays finite.
    ids[0] = masked.nonzero()[0, 0]
    logp, entropy, lse = forward(logits, ids, 0.7)
    grad = backward(logits, ids, lse, entropy, grad_logp, grad_entropy, 0.7)
    assert logp[0] == float("-inf") and torch.isfinite(entropy).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_may_alias_logits(seed, dtype):
    logits, ids, grad_logp, grad_entropy = random_case(7, 1031, 2.0, dtype)
    logp, entropy, lse = forward(logits, ids, 1.3)
    expected = backward(logits, ids, lse, entropy, grad_logp, grad_entropy, 1.3)
    in_place = logits.clone()
    backward(in_place, ids, lse, entropy, grad_logp, grad_entropy, 1.3, out=in_place)
    assert torch.equal(in_place, expected)


def test_padded_row_strides(seed):
    logits, ids, grad_logp, grad_entropy = random_case(5, 777)
    padded = torch.randn(5, 800)
    padded[:, :777] = logits
    outputs = forward(logits, ids, 0.9)
    padded_outputs = forward(padded[:, :777], ids, 0.9)
    for out, padded_out in zip(outputs, padded_outputs):
        assert torch.equal(out, padded_out)
    expected = backward(logits, ids, *outputs[::-1][:2], grad_logp, grad_entropy, 0.9)
    grad_buffer = torch.full((5, 790), 7.0)
    backward(padded[:, :777], ids, outputs[2], outputs[1], grad_logp, grad_entropy, 0.9, out=grad_buffer[:, :777])
    assert torch.equal(grad_buffer[:, :777], expected) and torch.all(grad_buffer[:, 777:] == 7)


def test_out_of_range_id_raises_before_writing(seed):
    logits, ids, grad_logp, grad_entropy = random_case(6, 300)
    ids[3] = 300
    logp, entropy, lse, grad = torch.full((6,), 5.0), torch.full((6,), 5.0), torch.full((6,), 5.0), torch.full((6, 300), 5.0)
    with pytest.raises(ValueError, match="out of range"):
        _C.logprob_rows(address(logits), 300, 0, 6, 300, address(ids), 1.0, address(logp), address(entropy),
                        address(lse), 2)
    with pytest.raises(ValueError, match="out of range"):
        backward(logits, ids, lse, entropy, grad_logp, grad_entropy, out=grad)
    assert all(torch.all(out == 5) for out in (logp, entropy, lse, grad))
    ids[3] = 0
    with pytest.raises(ValueError, match="entropy"):  # grad_entropy needs the forward's entropy
        backward(logits, ids, lse, None, grad_logp, grad_entropy, out=grad)
    assert torch.all(grad == 5)


def test_rows_are_deterministic(seed):
    """A row's outputs are bitwise the same alone, anywhere in a batch of 37, with 1 or 2 threads."""
    logits, ids, grad_logp, grad_entropy = random_case(37, 2049, 3.0)

    def run(rows, threads):
        x = logits[rows].contiguous()
        logp, entropy, lse = forward(x, ids[rows], 0.8, threads=threads)
        grad = backward(x, ids[rows], lse, entropy, grad_logp[rows], grad_entropy[rows], 0.8, threads=threads)
        return logp, entropy, lse, grad

    batch = run(torch.arange(37), 2)
    permutation = torch.randperm(37)
    for threads in (1, 2):
        for out, permuted in zip(batch, run(permutation, threads)):
            assert torch.equal(out[permutation], permuted)
    for r in (0, 18, 36):
        for out, alone in zip(batch, run(torch.tensor([r]), 1)):
            assert torch.equal(out[r:r + 1], alone)
