"""``sleepcore.build_info()``: what this install was built with and what it can use now."""

from __future__ import annotations

import importlib.util

import torch

from sleepcore._core import _C


def _triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return triton.__version__


def build_info() -> dict:
    """Describe the build and the runtime.

    Returns a dict with: ``version``; ``compiler`` (of ``_C``); ``openmp_threads``; ``cuda``
    (bool: CUDA sources compiled into ``_C``); ``cuda_archs`` (list of SM numbers compiled);
    ``cuda_runtime_version`` (of ``_C``'s runtime, 0 without CUDA); ``cuda_device_count`` (devices that runtime sees); ``triton`` (version or
    ``None``); ``torch``; ``gpu_usable`` (torch sees a CUDA device); ``gpu_name``.
    """
    info = dict(_C.build_info())
    info["cuda_archs"] = [int(arch) for arch in info["cuda_archs"].split(",") if arch]
    info["triton"] = _triton_version()
    info["torch"] = torch.__version__
    info["gpu_usable"] = torch.cuda.is_available()
    info["gpu_name"] = torch.cuda.get_device_name() if info["gpu_usable"] else None
    return info
