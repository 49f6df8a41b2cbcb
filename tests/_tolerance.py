"""The accuracy rules of DESIGN.md, as assertions."""

import torch

FP32 = dict(atol=1e-5, rtol=1e-4)


def assert_close_fp32(actual, expected, name="value", *, accumulated=False):
    """DESIGN.md's fp32 rule. ``accumulated=True`` is for sums over many rows (a weight gradient):
    their rounding grows with the size of the terms, not of the result, so atol scales with the
    largest |expected| (an element near zero that cancels terms of size 30 cannot be exact to 1e-5)."""
    atol = FP32["atol"] * max(1.0, expected.abs().max().item()) if accumulated else FP32["atol"]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=FP32["rtol"],
                               msg=lambda m: f"{name}: {m}")


def assert_low_precision(actual, expected, torch_same_dtype, name="value"):
    """16-bit rule: |op - ref| <= 2 * |torch_in_dtype - ref| + 1e-2 (max abs error, fp32 reference)."""
    op_error = (actual.float() - expected.float()).abs().max().item()
    torch_error = (torch_same_dtype.float() - expected.float()).abs().max().item()
    assert op_error <= 2 * torch_error + 1e-2, f"{name}: op error {op_error:.3g} > 2 x torch error {torch_error:.3g} + 1e-2"
