"""sleepcore.ops.generalized_jsd: value and gradient equal TRL's generalized_jsd_loss (the reference)."""

import pytest
import torch

from sleepcore import ops, reference
from _tolerance import assert_close_fp32


def trl_generalized_jsd_loss(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0):
    """TRL's formulation (kl_div with log targets), restated for a direct comparison."""
    s = torch.log_softmax(student_logits / temperature, -1)
    t = torch.log_softmax(teacher_logits / temperature, -1)
    if beta == 0:
        jsd = torch.nn.functional.kl_div(s, t, reduction="none", log_target=True)
    elif beta == 1:
        jsd = torch.nn.functional.kl_div(t, s, reduction="none", log_target=True)
    else:
        m = torch.logsumexp(torch.stack([s + torch.log(torch.tensor(1 - beta)), t + torch.log(torch.tensor(beta))]), 0)
        jsd = beta * torch.nn.functional.kl_div(m, t, reduction="none", log_target=True) + \
            (1 - beta) * torch.nn.functional.kl_div(m, s, reduction="none", log_target=True)
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_matches_trl(seed, beta, temperature):
    student = (torch.randn(3, 13, 1271) * 3).requires_grad_()
    teacher = torch.randn(3, 13, 1271) * 3
    labels = torch.randint(0, 1271, (3, 13))
    labels[0, :5] = -100
    expected = trl_generalized_jsd_loss(student, teacher, labels, beta, temperature)
    (expected_grad,) = torch.autograd.grad(expected * 1.7, student)
    actual = ops.generalized_jsd(student, teacher, labels, beta=beta, temperature=temperature)
    (grad,) = torch.autograd.grad(actual * 1.7, student)
    assert_close_fp32(actual, expected, "loss")
    assert_close_fp32(grad, expected_grad, "grad")


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_reductions_and_num_items(seed, reduction):
    student = torch.randn(37, 97, requires_grad=True)
    teacher = torch.randn(37, 97)
    labels = torch.randint(-1, 97, (37,)).masked_fill(torch.rand(37) < 0.3, -100)
    kwargs = dict(beta=0.7, reduction=reduction, num_items_in_batch=50)
    expected = reference.generalized_jsd(student, teacher, labels, **kwargs)
    actual = ops.generalized_jsd(student, teacher, labels, **kwargs)
    grad_output = torch.randn_like(actual)
    assert_close_fp32(actual, expected, "loss")
    assert_close_fp32(torch.autograd.grad(actual, student, grad_output)[0],
                      torch.autograd.grad(expected, student, grad_output)[0], "grad")


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


def test_all_ignored_is_zero(seed):
    student = torch.randn(4, 50, requires_grad=True)
    loss = ops.generalized_jsd(student, torch.randn(4, 50), torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0 and torch.all(student.grad == 0)
