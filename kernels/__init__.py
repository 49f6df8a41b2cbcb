"""Device kernels: Triton (``*.py``, JIT-compiled at run time) and CUDA sources (``cuda/``, built into ``_C``).

Installed as ``sleepcore.kernels``. Kernel modules import only torch and triton.
"""
