"""Triton log-prob row kernels against the fp32 reference (autograd through ``logprobs_from_logits``).

Without a GPU the kernels run under the Triton interpreter on CPU tensors, so shapes stay small.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from sleepcore.kernels import logprobs as triton_logprobs  # noqa: E402
from sleepcore.reference.logprobs import logprobs_from_logits  # noqa: E402
from _strided import padding_untouched, strided  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS = 6
IGNORED = 1  # token id -100; its logits are NaN, which the kernels must never read into the outputs
NEG_INF_ROW = 3  # a third of its columns are -inf (never the token's)
FP32 = dict(atol=1e-5, rtol=1e-4)

# The interpreter evaluates masked-out lanes with numpy (e.g. -inf - -inf), which only warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _grad_tols(dtype):
    return FP32 if dtype == torch.float32 else dict(atol=1e-4, rtol=1e-2)


def _inputs(vocab, dtype, std, seed=0):
    """(logits in ``dtype``, ids, grad_logp, grad_entropy); row NEG_INF_ROW has -inf columns."""
    gen = torch.Generator().manual_seed(seed)
    logits = std * torch.randn(ROWS, vocab, generator=gen)
    ids = torch.randint(0, vocab, (ROWS,), generator=gen)
    ids[IGNORED] = -100
    neg = torch.randperm(vocab, generator=gen)[: vocab // 3]
    neg = neg[neg != ids[NEG_INF_ROW]]
    logits[NEG_INF_ROW, neg] = -float("inf")
    return logits.to(dtype), ids, torch.randn(ROWS, generator=gen), torch.randn(ROWS, generator=gen)


def _reference(logits, ids, temperature, g1, g2):
    """(logp, entropy, lse, raw-logit grad of sum_r g1_r logp_r + g2_r entropy_r), fp32.

    -inf logits become -1e4: their probabilities are exactly 0 in fp32 either way, but the
    reference's entropy (-p log p) and its autograd would otherwise produce 0 * -inf = NaN.
    """
    keep = (ids >= 0)[:, None]
    x = logits.float().masked_fill(~keep, 0.0).masked_fill(logits.float() == -float("inf"), -1e4)
    x.requires_grad_()
    logp, entropy = logprobs_from_logits(x, ids, temperature=temperature)
    (g1 * logp + g2 * entropy).sum().backward()
    lse = torch.where(keep[:, 0], torch.logsumexp(x.detach() / temperature, -1), 0.0)
    return logp.detach(), entropy.detach(), lse, x.grad


def _run(logits, ids, temperature, g1, g2, *, entropy=True, grad="out", grad_entropy=True):
    """Forward then backward launchers on device tensors; ``grad``: "out" (new tensor) or "inplace".

    Outputs start as NaN so that an unwritten value shows.  Returns CPU (logp, entropy, lse, grad).
    ``logits`` is copied unless it is a view (a ``strided`` buffer, whose padding the caller checks).
    """
    logits = logits.to(DEVICE) if logits._base is not None else logits.to(DEVICE, copy=True)
    ids, g1, g2 = ids.to(DEVICE), g1.to(DEVICE), g2.to(DEVICE)
    ignored = ids < 0
    logits[ignored] = float("nan")
    logp, ent, lse = (torch.full((logits.shape[0],), float("nan"), device=DEVICE) for _ in range(3))
    ent = ent if entropy else None
    triton_logprobs.logprob_rows(logits, ids, logp, ent, lse, temperature=temperature)
    out = logits if grad == "inplace" else torch.full_like(logits, float("nan"))
    triton_logprobs.logprob_grad_rows(logits, ids, lse, ent, g1, g2 if grad_entropy else None, out,
                                      temperature=temperature)
    return logp.cpu(), None if ent is None else ent.cpu(), lse.cpu(), out.float().cpu()


@pytest.mark.parametrize("temperature,vocab,std,dtype", [
    (1.0, 1271, 1.0, torch.float32),
    (0.7, 97, 5.0, torch.float32),
    (2.0, 1271, 5.0, torch.float32),
    (0.5, 1271, 5.0, torch.float32),  # large z: the entropy must not lose digits to cancellation
    (0.7, 1271, 1.0, torch.bfloat16),
    (2.0, 97, 5.0, torch.float16),
    (1.0, 97, 1.0, torch.bfloat16),
])
def test_logprob_rows_match_reference(temperature, vocab, std, dtype):
    logits, ids, g1, g2 = _inputs(vocab, dtype, std)
    ref_logp, ref_ent, ref_lse, ref_grad = _reference(logits, ids, temperature, g1, g2)
    logp, ent, lse, grad = _run(logits, ids, temperature, g1, g2)
    # 16-bit storage is upcast exactly, so the fp32 outputs keep the fp32 tolerance.
    torch.testing.assert_close(logp, ref_logp, **FP32)
    torch.testing.assert_close(ent, ref_ent, **FP32)
    torch.testing.assert_close(lse, ref_lse, **FP32)
    torch.testing.assert_close(grad, ref_grad.to(dtype).float(), **_grad_tols(dtype))
    assert (grad[IGNORED] == 0).all() and (grad[NEG_INF_ROW][logits[NEG_INF_ROW].isinf()] == 0).all()


@pytest.mark.parametrize("entropy,grad_entropy", [(True, False), (False, False)])
def test_without_entropy_or_its_grad(entropy, grad_entropy):
    temperature = 0.7
    logits, ids, g1, g2 = _inputs(1271, torch.float32, 1.0, seed=1)
    ref_logp, ref_ent, ref_lse, ref_grad = _reference(logits, ids, temperature, g1, torch.zeros_like(g2))
    logp, ent, lse, grad = _run(logits, ids, temperature, g1, g2, entropy=entropy, grad_entropy=grad_entropy)
    torch.testing.assert_close(logp, ref_logp, **FP32)
    torch.testing.assert_close(lse, ref_lse, **FP32)
    if entropy:
        torch.testing.assert_close(ent, ref_ent, **FP32)
    torch.testing.assert_close(grad, ref_grad, **FP32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_in_place_on_strided_rows(dtype):
    temperature = 2.0
    logits, ids, g1, g2 = _inputs(1271, dtype, 5.0, seed=2)
    ref_logp, ref_ent, _, ref_grad = _reference(logits, ids, temperature, g1, g2)
    rows_view = strided(logits.to(DEVICE))
    logp, ent, _, grad = _run(rows_view, ids, temperature, g1, g2, grad="inplace")
    torch.testing.assert_close(logp, ref_logp, **FP32)
    torch.testing.assert_close(ent, ref_ent, **FP32)
    torch.testing.assert_close(grad, ref_grad.to(dtype).float(), **_grad_tols(dtype))
    assert padding_untouched(rows_view), "wrote outside the rows"


def test_token_at_neg_inf_logit():
    """logp = -inf exactly; entropy, lse and the gradient stay finite (the token's column gets g1 / T)."""
    temperature = 0.7
    logits, ids, g1, g2 = _inputs(97, torch.float32, 1.0, seed=3)
    logits[0, ids[0]] = -float("inf")
    ref_logp, ref_ent, ref_lse, ref_grad = _reference(logits, ids, temperature, g1, g2)
    logp, ent, lse, grad = _run(logits, ids, temperature, g1, g2)
    assert logp[0] == -float("inf")
    torch.testing.assert_close(logp[1:], ref_logp[1:], **FP32)
    torch.testing.assert_close(ent, ref_ent, **FP32)
    torch.testing.assert_close(lse, ref_lse, **FP32)
    torch.testing.assert_close(grad, ref_grad, **FP32)


def test_out_of_range_id_stays_in_bounds():
    """An id >= V (not checked: no host sync) gives NaN logp for its row only and touches nothing else."""
    temperature = 1.0
    logits, ids, g1, g2 = _inputs(97, torch.float32, 1.0, seed=4)
    ref_logp, ref_ent, ref_lse, ref_grad = _reference(logits, ids, temperature, g1, g2)
    bad = ids.clone()
    bad[0] = 97
    rows_view = strided(logits.to(DEVICE))
    logp, ent, lse, grad = _run(rows_view, bad, temperature, g1, g2, grad="inplace")
    assert logp[0].isnan() and grad[0].isfinite().all()
    torch.testing.assert_close(ent, ref_ent, **FP32)
    torch.testing.assert_close(lse, ref_lse, **FP32)
    torch.testing.assert_close(logp[1:], ref_logp[1:], **FP32)
    torch.testing.assert_close(grad[1:], ref_grad[1:], **FP32)
    assert padding_untouched(rows_view), "wrote outside the rows"


def _multi_tile_inputs(vocab=1271):
    """Std-5 logits with rows whose max arrives late (rescales), early, and after all -inf tiles."""
    logits, ids, g1, g2 = _inputs(vocab, torch.float32, 5.0, seed=5)
    ramp = torch.linspace(0.0, 30.0, vocab)
    logits[0] += ramp  # the max rises tile after tile
    logits[2] -= ramp  # the max is in the first tile
    logits[4, :600] = -float("inf")  # whole -inf tiles before the first finite one
    ids[4] = 900
    return logits, ids, g1, g2


def test_multi_tile_loops(monkeypatch):
    """A small block cap so the V loop runs several tiles (the last partial) and rescales on the way."""
    monkeypatch.setattr(triton_logprobs, "_MAX_BLOCK_V", 256)
    temperature = 0.5
    logits, ids, g1, g2 = _multi_tile_inputs()
    ref_logp, ref_ent, ref_lse, ref_grad = _reference(logits, ids, temperature, g1, g2)
    logp, ent, lse, grad = _run(logits, ids, temperature, g1, g2, grad="inplace")
    torch.testing.assert_close(logp, ref_logp, **FP32)
    torch.testing.assert_close(ent, ref_ent, **FP32)
    torch.testing.assert_close(lse, ref_lse, **FP32)
    torch.testing.assert_close(grad, ref_grad, **FP32)


@pytest.mark.parametrize("block_cap", [256, 4096])
def test_row_results_do_not_depend_on_the_batch(monkeypatch, block_cap):
    """Each row alone and inside the batch: bitwise equal outputs and gradients."""
    monkeypatch.setattr(triton_logprobs, "_MAX_BLOCK_V", block_cap)
    temperature = 0.7
    logits, ids, g1, g2 = _multi_tile_inputs()
    batch = _run(logits, ids, temperature, g1, g2)
    for r in (0, 4, ROWS - 1):
        alone = _run(logits[r:r + 1], ids[r:r + 1], temperature, g1[r:r + 1], g2[r:r + 1])
        for b, a in zip(batch, alone):
            assert torch.equal(b[r:r + 1], a), f"row {r} differs"


def test_argument_checks():
    logits, ids, g1, g2 = _inputs(97, torch.float32, 1.0)
    logits, ids, g1, g2 = logits.to(DEVICE), ids.to(DEVICE), g1.to(DEVICE), g2.to(DEVICE)
    out = torch.zeros(ROWS, device=DEVICE)
    with pytest.raises(ValueError, match="grad_entropy"):
        triton_logprobs.logprob_grad_rows(logits, ids, out, None, g1, g2, logits, temperature=1.0)
    with pytest.raises(ValueError, match="token_ids"):
        triton_logprobs.logprob_rows(logits, ids.int(), out, out, out, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        triton_logprobs.logprob_rows(logits, ids, out, out, out, temperature=0.0)
