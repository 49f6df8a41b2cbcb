"""The accuracy rules of DESIGN.md, as assertions."""

import torch

FP32 = dict(atol=1e-5, rtol=1e-4)


def assert_close_fp32(actual, expected, name="value"):
    torch.testing.assert_close(actual.float(), expected.float(), **FP32, msg=lambda m: f"{name}: {m}")


def assert_low_precision(actual, expected, torch_same_dtype, name="value"):
    """16-bit rule: |op - ref| <= 2 * |torch_in_dtype - ref| + 1e-2 (max abs error, fp32 reference)."""
    op_error = (actual.float() - expected.float()).abs().max().item()
    torch_error = (torch_same_dtype.float() - expected.float()).abs().max().item()
    assert op_error <= 2 * torch_error + 1e-2, f"{name}: op error {op_error:.3g} > 2 x torch error {torch_error:.3g} + 1e-2"
