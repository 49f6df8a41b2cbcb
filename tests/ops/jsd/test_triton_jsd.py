"""Triton JSD row kernels against the fp32 reference (autograd through ``jsd_from_logprobs``).

Without a GPU the kernels run under the Triton interpreter on CPU tensors, so shapes stay small.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from sleepcore.kernels import jsd as triton_jsd  # noqa: E402
from sleepcore.reference.distill import jsd_from_logprobs, topk_bins  # noqa: E402
from _strided import padding_untouched, strided  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS = 6
IGNORED = 1  # this row's scale is 0; its logits are NaN, which the kernels must never read into the outputs

# The interpreter evaluates masked-out lanes with numpy (e.g. -inf - -inf), which only warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _tols(dtype):
    return dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-4, rtol=1e-2)


def _inputs(vocab, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(ROWS, vocab, generator=gen)).to(dtype)
    teacher = (2 * torch.randn(ROWS, vocab, generator=gen)).to(dtype)
    scale = torch.rand(ROWS, generator=gen) + 0.5
    scale[IGNORED] = 0.0
    return student, teacher, scale


def _reference(student, scale, beta, temperature, bins):
    """(loss, raw-logit grad of sum_r scale_r * loss_r) with ``bins(z) -> (student_logp, teacher_logp)``."""
    z = student.float().masked_fill(scale[:, None] == 0, 0.0).requires_grad_()
    per_row = jsd_from_logprobs(*bins(z), beta)
    (per_row * scale).sum().backward()
    return per_row.detach().masked_fill(scale == 0, 0.0), z.grad


def _full_bins(teacher, temperature):
    teacher_logp = torch.log_softmax(teacher.float() / temperature, -1)
    return lambda z: (torch.log_softmax(z / temperature, -1), teacher_logp)


def _run(fn, student, *args, grad, beta, temperature):
    """Call a launcher on device copies; ``grad``: "out" (new tensor), None, or "inplace"."""
    student = student.to(DEVICE)
    args = [a.to(DEVICE) for a in args]
    loss = torch.full((student.shape[0],), float("nan"), device=DEVICE)
    out = {"out": torch.full_like(student, float("nan")), None: None, "inplace": student}[grad]
    student[IGNORED] = float("nan")
    fn(student, *args, loss, out, beta=beta, temperature=temperature)
    return loss.cpu(), None if out is None else out.float().cpu()


@pytest.mark.parametrize("beta,temperature,vocab,dtype", [
    (0.0, 1.0, 1271, torch.float32),
    (0.1, 0.5, 97, torch.float32),
    (0.5, 2.0, 1271, torch.float32),
    (1.0, 0.5, 1271, torch.float32),
    (0.5, 1.0, 97, torch.bfloat16),
    (0.0, 2.0, 97, torch.float16),
    (1.0, 1.0, 1271, torch.bfloat16),
])
def test_jsd_rows_matches_reference(beta, temperature, vocab, dtype):
    student, teacher, scale = _inputs(vocab, dtype)
    ref_loss, ref_grad = _reference(student, scale, beta, temperature, _full_bins(teacher, temperature))
    loss, grad = _run(triton_jsd.jsd_rows, student, teacher, scale, grad="out", beta=beta, temperature=temperature)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad, ref_grad.to(dtype).float(), **_tols(dtype))


@pytest.mark.parametrize("grad_mode", [None, "inplace"])
def test_jsd_rows_forward_only_and_in_place_on_strided_rows(grad_mode):
    beta, temperature = 0.5, 1.0
    student, teacher, scale = _inputs(1271, torch.float32, seed=1)
    ref_loss, ref_grad = _reference(student, scale, beta, temperature, _full_bins(teacher, temperature))
    rows_view = strided(student.to(DEVICE))
    loss, grad = _run(triton_jsd.jsd_rows, rows_view, strided(teacher.to(DEVICE)), scale, grad=grad_mode,
                      beta=beta, temperature=temperature)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    if grad_mode == "inplace":
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
        assert padding_untouched(rows_view), "wrote outside the rows"


def _topk_inputs(vocab, k, dtype, seed=0):
    """Student logits and a top-k teacher: distinct ids in shuffled order, log-probs of a softmax."""
    student, teacher, scale = _inputs(vocab, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.stack([torch.randperm(vocab, generator=gen)[:k] for _ in range(ROWS)])
    logprobs = torch.log_softmax(teacher.float(), -1).gather(-1, ids)
    return student, ids, logprobs, scale


def _topk_case(case, vocab, k, dtype):
    student, ids, logprobs, scale = _topk_inputs(vocab, k, dtype)
    if case == "teacher_floor":  # teacher mass over the ids exceeds 1: q_rest = 0, floored
        logprobs = logprobs + 0.01
    if case == "tiny_rest":  # one column outside the ids, at e^-20 (row 2) and e^-80 (row 3, floored)
        student[2, ids[2, 0]] -= 20.0
        student[3, ids[3, 0]] -= 80.0
        ids, logprobs = ids[:, 1:], logprobs[:, 1:] - 0.05
    return student, ids, logprobs, scale


@pytest.mark.parametrize("case,k,beta,temperature,vocab,dtype", [
    ("plain", 1, 0.0, 1.0, 1271, torch.float32),
    ("plain", 7, 0.5, 2.0, 1271, torch.float32),
    ("plain", 7, 1.0, 0.5, 97, torch.bfloat16),
    ("plain", 97, 0.1, 1.0, 97, torch.float32),
    ("teacher_floor", 97, 1.0, 1.0, 97, torch.float32),
    ("tiny_rest", 97, 0.0, 1.0, 97, torch.float32),
    ("tiny_rest", 97, 0.5, 1.0, 97, torch.float16),
])
def test_topk_jsd_rows_matches_reference(case, k, beta, temperature, vocab, dtype):
    student, ids, logprobs, scale = _topk_case(case, vocab, k, dtype)
    ref_loss, ref_grad = _reference(student, scale, beta, temperature,
                                    lambda z: topk_bins(z, ids, logprobs, temperature))
    loss, grad = _run(triton_jsd.topk_jsd_rows, student, ids, logprobs, scale, grad="out",
                      beta=beta, temperature=temperature)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad, ref_grad.to(dtype).float(), **_tols(dtype))


@pytest.mark.parametrize("grad_mode", [None, "inplace"])
def test_topk_jsd_rows_forward_only_and_in_place_on_strided_rows(grad_mode):
    beta, temperature = 0.5, 2.0
    student, ids, logprobs, scale = _topk_inputs(97, 7, torch.float32, seed=2)
    ref_loss, ref_grad = _reference(student, scale, beta, temperature,
                                    lambda z: topk_bins(z, ids, logprobs, temperature))
    loss, grad = _run(triton_jsd.topk_jsd_rows, strided(student), ids, logprobs, scale, grad=grad_mode,
                      beta=beta, temperature=temperature)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    if grad_mode == "inplace":
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


def test_topk_out_of_range_ids_stay_in_bounds():
    student, ids, logprobs, scale = _topk_inputs(97, 7, torch.float32, seed=3)
    ref_loss, ref_grad = _reference(student, scale, 0.5, 1.0, lambda z: topk_bins(z, ids, logprobs, 1.0))
    bad_ids = ids.clone()
    bad_ids[0, 0], bad_ids[0, 1] = -1, 97  # row 0 breaks the contract; the other rows must not notice
    rows_view = strided(student.to(DEVICE))
    loss, grad = _run(triton_jsd.topk_jsd_rows, rows_view, bad_ids, logprobs, scale, grad="inplace",
                      beta=0.5, temperature=1.0)
    torch.testing.assert_close(loss[1:], ref_loss[1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad[1:], ref_grad[1:], atol=1e-5, rtol=1e-4)
    assert padding_untouched(rows_view), "wrote outside the rows"


@pytest.mark.parametrize("k,block_k", [(None, 4), (7, 4), (1271, 256)])
def test_multi_tile_loops(monkeypatch, k, block_k):
    """Small block caps so the V loop runs several tiles (the last partial) and the ids loop several chunks."""
    monkeypatch.setattr(triton_jsd, "_MAX_BLOCK_V", 256)
    monkeypatch.setattr(triton_jsd, "_MAX_BLOCK_K", block_k)
    beta, temperature = (0.5, 0.5) if k is None else (1.0, 2.0)
    if k is None:
        student, teacher, scale = _inputs(1271, torch.float32, seed=4)
        bins, fn, args = _full_bins(teacher, temperature), triton_jsd.jsd_rows, (teacher, scale)
    else:
        student, ids, logprobs, scale = _topk_inputs(1271, k, torch.float32, seed=4)
        bins = lambda z: topk_bins(z, ids, logprobs, temperature)  # noqa: E731
        fn, args = triton_jsd.topk_jsd_rows, (ids, logprobs, scale)
    ref_loss, ref_grad = _reference(student, scale, beta, temperature, bins)
    loss, grad = _run(fn, student, *args, grad="inplace", beta=beta, temperature=temperature)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
