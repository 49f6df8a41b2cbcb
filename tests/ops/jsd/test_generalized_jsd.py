"""sleepcore.ops.generalized_jsd: value and gradient equal TRL 1.16's own
``GKDTrainer.generalized_jsd_loss`` (when trl is installed) for every reduction TRL has.

TRL's function runs on fp64 copies of the inputs, so the comparison measures our fp32 error
(TRL's own fp32 result differs from the exact value by about as much as ours)."""

import os

import pytest
import torch

from sleepcore import ops, reference
from _tolerance import assert_close_fp32

SHAPES = [(3, 13, 257), (37, 97), (2, 3, 5, 64)]  # [B, S, V], [N, V], 4-D; odd V


@pytest.fixture(scope="module")
def trl_loss():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return pytest.importorskip("trl.experimental.gkd").GKDTrainer.generalized_jsd_loss


def _inputs(shape, labelled):
    student = (torch.randn(shape) * 3).requires_grad_()
    teacher = torch.randn(shape) * 3
    if not labelled:
        return student, teacher, None
    labels = torch.randint(0, shape[-1], shape[:-1]).masked_fill(torch.rand(shape[:-1]) < 0.3, -100)
    labels.view(-1)[:2] = -100
    labels.view(-1)[-1] = 5  # at least one kept token
    return student, teacher, labels


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_scalar_reductions_match_trl(seed, trl_loss, beta, temperature):
    for shape in SHAPES:
        for labelled in (False, True):
            student, teacher, labels = _inputs(shape, labelled)
            student64 = student.detach().double().requires_grad_()  # TRL's maths in fp64: the exact value
            for reduction in ("batchmean", "sum", "mean"):
                for num_items in (None, 50, torch.tensor(23)):
                    kwargs = dict(beta=beta, temperature=temperature, reduction=reduction,
                                  num_items_in_batch=num_items)
                    case = f"{shape} labels={labelled} {reduction} num_items={num_items}"
                    expected = trl_loss(student64, teacher.double(), labels, **kwargs)
                    actual = ops.generalized_jsd(student, teacher, labels, **kwargs)
                    assert_close_fp32(actual, expected, f"loss {case}")
                    (expected_grad,) = torch.autograd.grad(expected * 1.7, student64)
                    (grad,) = torch.autograd.grad(actual * 1.7, student)
                    # unnormalised ("sum") gradients are differences of terms of size 1.7 / temperature
                    assert_close_fp32(grad, expected_grad, f"grad {case}", accumulated=True)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("labelled", [False, True])
def test_none_is_trls_per_element_terms_summed_over_the_vocabulary(seed, trl_loss, beta, labelled):
    """Ours is per token (0 at ignored tokens); TRL's ``"none"`` is per element, masked tokens dropped."""
    student, teacher, labels = _inputs((3, 13, 257), labelled)
    student64 = student.detach().double().requires_grad_()
    per_element = trl_loss(student64, teacher.double(), labels, beta=beta, temperature=0.7, reduction="none")
    per_token = ops.generalized_jsd(student, teacher, labels, beta=beta, temperature=0.7, reduction="none")
    assert per_token.shape == (3, 13) and per_token.dtype == torch.float32
    keep = torch.ones(3, 13, dtype=torch.bool) if labels is None else labels != -100
    assert_close_fp32(per_token[keep], per_element.reshape(-1, 257).sum(-1), "per-token value")
    assert torch.all(per_token[~keep] == 0)
    grad_output = torch.randn(3, 13)
    (expected,) = torch.autograd.grad(per_element.reshape(-1, 257).sum(-1), student64, grad_output[keep].double())
    (actual,) = torch.autograd.grad(per_token, student, grad_output)
    assert_close_fp32(actual, expected, "grad")


def test_batchmean_without_labels_is_a_per_sequence_sum(seed):
    student, teacher = torch.randn(4, 6, 33), torch.randn(4, 6, 33)
    per_token = ops.generalized_jsd(student, teacher, reduction="none")
    assert_close_fp32(ops.generalized_jsd(student, teacher), per_token.sum() / 4, "[B, S, V]")
    assert_close_fp32(ops.generalized_jsd(student.reshape(24, 33), teacher.reshape(24, 33)), per_token.mean(),
                      "[N, V]")


def test_extreme_and_masked_logits_stay_finite(seed):
    student = (torch.randn(6, 300) * 40).requires_grad_()
    teacher = torch.randn(6, 300) * 40
    teacher[:, 290:] = float("-inf")  # padded vocab entries, masked on both sides
    student.data[:, 290:] = float("-inf")
    for beta in (0.0, 0.5, 1.0):
        actual = ops.generalized_jsd(student, teacher, beta=beta, reduction="none")
        expected = reference.generalized_jsd(student, teacher, beta=beta, reduction="none")
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    loss = ops.generalized_jsd(student, teacher, beta=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean"])
def test_all_ignored_is_zero(seed, reduction):
    student = torch.randn(4, 50, requires_grad=True)
    loss = ops.generalized_jsd(student, torch.randn(4, 50), torch.full((4,), -100), reduction=reduction)
    loss.backward()
    assert loss.item() == 0 and torch.all(student.grad == 0)


def test_reference_follows_the_same_trl_reductions(seed):
    """The fp32 reference (used by other tests and benchmarks) and the op agree on every reduction,
    without trl installed: [B, S, V] without labels divides by B, "mean" by tokens x V."""
    for shape in SHAPES:
        for labelled in (False, True):
            student, teacher, labels = _inputs(shape, labelled)
            for reduction in ("batchmean", "sum", "mean", "none"):
                for num_items in (None, 50):
                    kwargs = dict(beta=0.3, temperature=1.5, reduction=reduction, num_items_in_batch=num_items)
                    case = f"{shape} labels={labelled} {reduction} num_items={num_items}"
                    expected = reference.generalized_jsd(student, teacher, labels, **kwargs)
                    assert_close_fp32(ops.generalized_jsd(student, teacher, labels, **kwargs), expected, case)
