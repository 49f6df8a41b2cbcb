"""Test setup: run Triton kernels under the interpreter when no GPU is usable.

``TRITON_INTERPRET`` must be set before any Triton kernel module is imported, so it is set here,
at collection time, before the tests import sleepcore.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def seed():
    """A fresh, reported seed per test: random inputs differ between tests but can be replayed."""
    value = int.from_bytes(os.urandom(4), "little") if os.environ.get("SLEEPCORE_TEST_SEED") is None \
        else int(os.environ["SLEEPCORE_TEST_SEED"])
    torch.manual_seed(value)
    print(f"seed={value} (replay with SLEEPCORE_TEST_SEED={value})")
    return value


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a usable CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
