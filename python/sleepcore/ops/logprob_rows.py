"""Device dispatch for the per-row log-prob kernels (CPU: ``_C`` with OpenMP; CUDA: Triton).

Contract (shared by ``csrc/cpu/logprob_rows.h`` and ``kernels/logprobs.py``): row chunks of raw
logits ``[R, V]`` (unit column stride) and int64 ``token_ids [R]`` (negative = ignored row).
Forward writes float32 ``logp``, ``entropy`` (optional) and ``lse`` ``[R]``; the gradient
kernel writes d(sum grad_logp*logp + grad_entropy*entropy)/d(logits) into ``grad``, which may
be the logits buffer.
"""

from __future__ import annotations

from sleepcore._core import _C, address, cpu_threads, dtype_code
from sleepcore.ops.divergence_rows import row_stride, use_triton


def logprob_rows(logits, token_ids, logp, entropy, lse, *, temperature: float, backend: str) -> None:
    """Per-row token log-prob, entropy (when ``entropy`` is not None) and log-sum-exp."""
    if use_triton(logits.device, backend):
        from sleepcore.kernels import logprobs as triton_logprobs

        triton_logprobs.logprob_rows(logits, token_ids, logp, entropy, lse, temperature=temperature)
        return
    rows, vocab = logits.shape
    _C.logprob_rows(address(logits), row_stride(logits), dtype_code(logits), rows, vocab, address(token_ids),
                    temperature, address(logp), address(entropy), address(lse), cpu_threads())


def logprob_grad_rows(logits, token_ids, lse, entropy, grad_logp, grad_entropy, grad, *, temperature: float,
                      backend: str) -> None:
    """Gradient of ``grad_logp*logp + grad_entropy*entropy`` w.r.t. the raw logits, into ``grad``."""
    if use_triton(logits.device, backend):
        from sleepcore.kernels import logprobs as triton_logprobs

        triton_logprobs.logprob_grad_rows(logits, token_ids, lse, entropy, grad_logp, grad_entropy, grad,
                                          temperature=temperature)
        return
    rows, vocab = logits.shape
    _C.logprob_grad_rows(address(logits), row_stride(logits), address(grad), row_stride(grad), dtype_code(logits),
                         rows, vocab, address(token_ids), temperature, address(lse), address(entropy),
                         address(grad_logp), address(grad_entropy), cpu_threads())
