"""Access to the compiled core ``sleepcore._C`` and the small conventions of its raw-pointer API."""

from __future__ import annotations

import torch

try:
    from sleepcore import _C
except ImportError as error:  # pragma: no cover - only on a broken install
    raise ImportError(
        "sleepcore's compiled core (sleepcore._C) could not be imported. Reinstall with "
        "`pip install .` from a clone (needs a C++17 compiler with OpenMP and CMake >= 3.18); "
        f"original error: {error}"
    ) from error

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def dtype_code(tensor: torch.Tensor) -> int:
    """The ``_C`` dtype code of a floating tensor (0 fp32, 1 bf16, 2 fp16)."""
    return _DTYPE_CODES[tensor.dtype]


def address(tensor: torch.Tensor | None) -> int:
    """``tensor.data_ptr()``, or 0 for ``None`` (the ``_C`` convention for an absent buffer)."""
    return 0 if tensor is None else tensor.data_ptr()


def cpu_threads() -> int:
    """Threads for ``_C``'s OpenMP loops: the same count torch uses for its own CPU kernels."""
    return torch.get_num_threads()


__all__ = ["_C", "dtype_code", "address", "cpu_threads"]
