"""sleepcore.ops.fused_linear_jsd against the fp32 reference, on fresh random inputs."""

import pytest
import torch

from sleepcore import ops, reference
from sleepcore.losses import FusedLinearJSDLoss
from _tolerance import assert_close_fp32, assert_low_precision


def make_inputs(n, hs, ht, v, dtype=torch.float32, bias=False, ignore_fraction=0.25):
    student_hidden = torch.randn(n, hs, dtype=dtype, requires_grad=True)
    student_weight = (torch.randn(v, hs) / hs**0.5).to(dtype).requires_grad_()
    teacher_hidden = torch.randn(n, ht, dtype=dtype)
    teacher_weight = (torch.randn(v, ht) / ht**0.5 * 2).to(dtype)
    labels = torch.randint(0, v, (n,))
    labels[torch.rand(n) < ignore_fraction] = -100
    student_bias = torch.randn(v, dtype=dtype, requires_grad=True) if bias else None
    teacher_bias = torch.randn(v, dtype=dtype) if bias else None
    return dict(student_hidden=student_hidden, student_weight=student_weight, teacher_hidden=teacher_hidden,
                teacher_weight=teacher_weight, labels=labels, student_bias=student_bias, teacher_bias=teacher_bias)


def run(fn, inputs, grad_output=None, **options):
    fresh = {k: (v.detach().clone().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v)
             for k, v in inputs.items()}
    loss = fn(fresh["student_hidden"], fresh["student_weight"], fresh["teacher_hidden"], fresh["teacher_weight"],
              fresh["labels"], student_bias=fresh["student_bias"], teacher_bias=fresh["teacher_bias"], **options)
    if grad_output is None:
        grad_output = torch.randn_like(loss) * 3
    loss.backward(grad_output)
    grads = [fresh[k].grad for k in ("student_hidden", "student_weight", "student_bias") if fresh[k] is not None]
    return loss, grads, grad_output


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_matches_reference_odd_shapes(seed, beta, temperature):
    inputs = make_inputs(37, 61, 45, 1271)
    expected, expected_grads, grad_output = run(reference.fused_linear_jsd, inputs, beta=beta, temperature=temperature)
    actual, grads, _ = run(ops.fused_linear_jsd, inputs, grad_output, beta=beta, temperature=temperature, chunk_size=16)
    assert_close_fp32(actual, expected, "loss")
    for name, got, want in zip(("grad_hidden", "grad_weight"), grads, expected_grads):
        assert_close_fp32(got, want, name)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
def test_reductions_bias_and_3d(seed, reduction, bias):
    inputs = make_inputs(2 * 19, 32, 24, 515, bias=bias)
    inputs = {k: (v.reshape(2, 19, -1) if k.endswith("hidden") else v) for k, v in inputs.items()}
    inputs["labels"] = inputs["labels"].reshape(2, 19)
    for k in ("student_hidden",):
        inputs[k] = inputs[k].detach().requires_grad_()
    expected, expected_grads, grad_output = run(reference.fused_linear_jsd, inputs, reduction=reduction, beta=0.3)
    actual, grads, _ = run(ops.fused_linear_jsd, inputs, grad_output, reduction=reduction, beta=0.3, chunk_size=7)
    assert actual.shape == expected.shape == ((2, 19) if reduction == "none" else ())
    assert_close_fp32(actual, expected, "loss")
    for got, want in zip(grads, expected_grads):
        assert_close_fp32(got, want, "grad")


@pytest.mark.parametrize("chunk_size", [1, 5, 13, 37, 1000])
def test_chunk_size_does_not_change_result(seed, chunk_size):
    inputs = make_inputs(37, 16, 16, 300)
    expected, expected_grads, grad_output = run(reference.fused_linear_jsd, inputs)
    actual, grads, _ = run(ops.fused_linear_jsd, inputs, grad_output, chunk_size=chunk_size)
    assert_close_fp32(actual, expected, "loss")
    for got, want in zip(grads, expected_grads):
        assert_close_fp32(got, want, "grad")


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_all_tokens_ignored_gives_zero_not_nan(seed, reduction):
    inputs = make_inputs(9, 8, 8, 100, bias=True, ignore_fraction=1.1)
    loss, grads, _ = run(ops.fused_linear_jsd, inputs, reduction=reduction)
    assert torch.all(loss == 0)
    for grad in grads:
        assert torch.all(grad == 0)


def test_num_items_in_batch_makes_accumulation_exact(seed):
    inputs = make_inputs(40, 24, 20, 333, bias=True)
    total_kept = (inputs["labels"] != -100).sum()
    full_loss, (full_hidden, full_weight, full_bias), _ = run(ops.fused_linear_jsd, inputs, torch.tensor(1.0))
    losses, hidden_parts, weight_sum, bias_sum = [], [], 0, 0
    for part in torch.arange(40).chunk(3):
        micro = {k: (v[part] if k in ("student_hidden", "teacher_hidden", "labels") else v) for k, v in inputs.items()}
        loss, (hidden, weight, bias), _ = run(ops.fused_linear_jsd, micro, torch.tensor(1.0),
                                              num_items_in_batch=total_kept)
        losses.append(loss)
        hidden_parts.append(hidden)
        weight_sum, bias_sum = weight_sum + weight, bias_sum + bias
    assert_close_fp32(sum(losses), full_loss, "loss summed over micro-batches")
    assert_close_fp32(torch.cat(hidden_parts), full_hidden, "grad_hidden over micro-batches")
    assert_close_fp32(weight_sum, full_weight, "grad_weight summed over micro-batches")
    assert_close_fp32(bias_sum, full_bias, "grad_bias summed over micro-batches")


def test_bool_mask_equals_ignore_index(seed):
    inputs = make_inputs(20, 12, 12, 99)
    as_mask = dict(inputs, labels=inputs["labels"] != -100)
    assert_close_fp32(run(ops.fused_linear_jsd, as_mask, torch.tensor(1.0))[0],
                      run(ops.fused_linear_jsd, inputs, torch.tensor(1.0))[0])


def test_teacher_gets_no_gradient(seed):
    inputs = make_inputs(10, 8, 8, 50)
    inputs["teacher_hidden"].requires_grad_()
    inputs["teacher_weight"].requires_grad_()
    loss = ops.fused_linear_jsd(inputs["student_hidden"], inputs["student_weight"], inputs["teacher_hidden"],
                                inputs["teacher_weight"], inputs["labels"])
    loss.backward()
    assert inputs["teacher_hidden"].grad is None and inputs["teacher_weight"].grad is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_rule(seed, dtype):
    inputs = make_inputs(33, 64, 48, 777)
    expected, expected_grads, grad_output = run(reference.fused_linear_jsd, inputs)
    low = {k: (v.detach().to(dtype).requires_grad_(v.requires_grad) if torch.is_tensor(v) and v.is_floating_point()
               else v) for k, v in inputs.items()}

    torch_loss, torch_grads, _ = run(reference.fused_linear_jsd, low, grad_output, upcast=False)
    actual, grads, _ = run(ops.fused_linear_jsd, low, grad_output, chunk_size=8)
    assert actual.dtype == torch.float32 and grads[0].dtype == dtype
    assert_low_precision(actual, expected, torch_loss, "loss")
    for got, want, plain in zip(grads, expected_grads, torch_grads):
        assert_low_precision(got, want, plain, "grad")


def test_module_front_end(seed):
    inputs = make_inputs(12, 10, 10, 64)
    module = FusedLinearJSDLoss(beta=0.2, temperature=2.0, reduction="sum")
    expected = reference.fused_linear_jsd(inputs["student_hidden"], inputs["student_weight"], inputs["teacher_hidden"],
                                          inputs["teacher_weight"], inputs["labels"], beta=0.2, temperature=2.0,
                                          reduction="sum")
    actual = module(inputs["student_hidden"], inputs["student_weight"], inputs["teacher_hidden"],
                    inputs["teacher_weight"], inputs["labels"])
    assert_close_fp32(actual, expected)
    assert "beta=0.2" in repr(module)


def test_non_contiguous_inputs_work(seed):
    inputs = make_inputs(21, 16, 12, 203)
    strided_inputs = dict(inputs)
    strided_inputs["student_hidden"] = inputs["student_hidden"].detach().t().contiguous().t().requires_grad_()
    strided_inputs["teacher_weight"] = inputs["teacher_weight"].t().contiguous().t()
    assert not strided_inputs["student_hidden"].is_contiguous() and not strided_inputs["teacher_weight"].is_contiguous()
    expected, expected_grads, grad_output = run(reference.fused_linear_jsd, inputs)
    actual, grads, _ = run(ops.fused_linear_jsd, strided_inputs, grad_output)
    assert_close_fp32(actual, expected, "loss")
    for got, want in zip(grads, expected_grads):
        assert_close_fp32(got, want, "grad")
