"""``sample_tokens``: one token per row of logits, with temperature, top-k, top-p and min-p.

Semantics as FlashInfer's ``top_k_top_p_sampling_from_logits``, per-request parameters: with
z = logits / T, the allowed set is the top-k tokens of z, then (on the distribution renormalised
over them) the smallest set of most probable tokens whose mass reaches top_p, intersected with
{p >= min_p * max p}; the token is drawn from the renormalised allowed set. The draw is a
counter-based Gumbel-max (no sort, no generator state): a row's token depends only on its logits,
parameters and (seed, step), never on the rest of the batch. The kernels are
``csrc/cpu/sampling.cpp`` (CPU) and ``kernels/sampling.py`` (Triton), with the same random stream.

``logprobs`` come from the trainer's row kernel (``ops.logprob_rows``, which backs
``ops.fused_linear_logprobs``) at the row's temperature, so rollout and trainer log-probs agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sleepcore import validation
from sleepcore._core import _C, address, cpu_threads, dtype_code
from sleepcore.ops import _checks
from sleepcore.ops.divergence_rows import row_stride, use_triton
from sleepcore.ops.logprob_rows import logprob_rows

_PARAMS = ("temperature", "top_k", "top_p", "min_p")


def _row_logprobs(logits: Tensor, token_ids: Tensor, temperatures, backend: str) -> Tensor:
    """log_softmax(logits / T)[token] per row through the shared row kernel, one call per distinct T."""
    rows = logits.shape[0]
    logp = logits.new_empty(rows, dtype=torch.float32)
    values = sorted(set(temperatures))
    for value in values:
        lse = logits.new_empty(rows, dtype=torch.float32)
        if len(values) == 1:
            logprob_rows(logits, token_ids, logp, None, lse, temperature=value, backend=backend)
            break
        index = torch.tensor([r for r, t in enumerate(temperatures) if t == value], device=logits.device)
        part = logits.new_empty(len(index), dtype=torch.float32)
        logprob_rows(logits.index_select(0, index), token_ids[index], part, None, lse[:len(index)],
                     temperature=value, backend=backend)
        logp[index] = part
    return logp


def _bad_values(temperature, top_k, top_p, min_p) -> Tensor:
    """One flag per parameter: does any row hold a value outside its range (NaN counts)?"""
    return torch.stack([~(temperature >= 0).all(), (top_k < 0).any(), ~((top_p > 0) & (top_p <= 1)).all(),
                        ~((min_p >= 0) & (min_p < 1)).all()]).to(torch.float64)


@torch.library.custom_op("sleepcore::sample_tokens", mutates_args=())
def _sample_tokens(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor, seeds: Tensor,
                   steps: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    rows, vocab = logits.shape
    token_ids = logits.new_empty(rows, dtype=torch.int64)
    truncated = logits.new_empty(rows, dtype=torch.float32)
    if use_triton(logits.device, backend):
        from sleepcore.kernels import sampling as triton_sampling

        bad = logits.new_empty(rows, dtype=torch.int32)
        triton_sampling.sample_rows(logits, temperature, top_k, top_p, min_p, seeds, steps, token_ids, truncated, bad)
        bad_row = torch.where(bad.any(), bad.argmax(), -1).to(torch.float64).view(1)
    else:
        first_bad = _C.sample_rows(address(logits), row_stride(logits), dtype_code(logits), rows, vocab,
                                   address(temperature), address(top_k), address(top_p), address(min_p),
                                   address(seeds), address(steps), address(token_ids), address(truncated),
                                   cpu_threads())
        bad_row = torch.full((1,), float(first_bad), dtype=torch.float64)
    # the one host read: parameter checks, the first invalid row and the temperatures
    host = torch.cat([_bad_values(temperature, top_k, top_p, min_p), bad_row.to(logits.device), temperature]).cpu()
    for name, flag in zip(_PARAMS, host[:4].tolist()):
        if flag:
            raise ValueError(f"{name} out of range: need temperature >= 0, top_k >= 0, 0 < top_p <= 1 and "
                             f"0 <= min_p < 1")
    if host[4] >= 0:
        raise ValueError(f"logits row {int(host[4])} holds NaN or +inf (or no finite entry)")
    temperatures = [t if t > 0 else 1.0 for t in host[5:].tolist()]  # greedy rows: the log-prob at T = 1
    # a renormalised log-prob can round a few ulps above 0 when the allowed set is one token
    return token_ids, _row_logprobs(logits, token_ids, temperatures, backend), truncated.clamp_(max=0.0)


@_sample_tokens.register_fake
def _(logits, temperature, top_k, top_p, min_p, seeds, steps, backend):
    rows = logits.shape[0]
    return (logits.new_empty(rows, dtype=torch.int64), logits.new_empty(rows, dtype=torch.float32),
            logits.new_empty(rows, dtype=torch.float32))


# per parameter: the dtype the kernels read, the allowed values and how to say them
_RULES = {
    "temperature": (torch.float64, lambda v: v >= 0, ">= 0"),
    "top_k": (torch.int64, lambda v: v >= 0, ">= 0"),
    "top_p": (torch.float32, lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_p": (torch.float32, lambda v: 0 <= v < 1, "in [0, 1)"),
    "seeds": (torch.int64, lambda v: True, "an int"),
    "steps": (torch.int64, lambda v: True, "an int"),
}


def sampling_parameter(name: str, value):
    """A sampling parameter (temperature, top_k, top_p, min_p, seeds, steps) given as a Python scalar:
    an int or a finite number in its range, else ``TypeError`` / ``ValueError`` naming it."""
    dtype, in_range, rule = _RULES[name]
    value = validation.number(name, value) if dtype.is_floating_point else validation.integer(name, value)
    if not in_range(value):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return value


def _per_row(name: str, value, rows: int, device: torch.device) -> Tensor:
    """A Python scalar (checked here) or a 1-D tensor of length ``rows`` (values checked in the op),
    as the dtype the kernels read."""
    dtype = _RULES[name][0]
    if not isinstance(value, torch.Tensor):
        return torch.full((rows,), sampling_parameter(name, value), dtype=dtype, device=device)
    integral = not dtype.is_floating_point
    if value.dtype == torch.bool or value.dtype.is_complex or (integral and value.dtype.is_floating_point):
        raise TypeError(f"{name} must be {'an integer' if integral else 'a real'} tensor, got {value.dtype}")
    if value.dim() != 1 or value.shape[0] != rows:
        raise ValueError(f"{name} must be a scalar or a 1-D tensor of length {rows}, got shape "
                         f"{tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} must be on the logits' device {device}, got {value.device}")
    return value.to(dtype).contiguous()


def sample_tokens(logits, *, temperature, top_k=0, top_p=1.0, min_p=0.0, seeds, steps, backend="auto"):
    """Sample one token per row of ``logits``; return its log-probs, full and truncated.

    Args:
        logits: ``[B, V]`` float32/bfloat16/float16, unit column stride (any row stride). -inf
            entries are masked tokens; NaN or +inf, or a row without a finite entry, raise.
        temperature: >= 0 (0 = greedy argmax). top_k: int >= 0 (0 = off; >= V = off).
        top_p: in (0, 1] (1 = off). min_p: in [0, 1) (0 = off). seeds, steps: int64 (the decode
            step). Each is a Python scalar (broadcast) or a 1-D tensor of length B on logits' device.
        backend: ``"auto"`` (CPU: ``_C``; CUDA: Triton), ``"cpu"`` or ``"triton"``.

    Returns:
        ``(token_ids, logprobs, truncated_logprobs)``, each ``[B]``: int64 tokens;
        ``log_softmax(logits / T)[token]`` over the full vocabulary (float32, T = 1 for greedy rows,
        from the same row kernel as ``fused_linear_logprobs``); the token's log-prob under the
        renormalised allowed distribution (float32, 0 for greedy rows). Ties at a top-k or top-p
        boundary keep every tied token. A row's token depends only on its own logits, parameters,
        seed and step.

    Raises:
        TypeError / ValueError naming the argument (parameter values are checked after the kernel,
        with the one host read the op makes).
    """
    _checks.tensor("logits", logits, ndims=(2,))
    rows, vocab = logits.shape
    if vocab == 0 or (vocab > 1 and logits.stride(1) != 1):
        raise ValueError(f"logits must have V >= 1 columns and a unit column stride, got shape "
                         f"{tuple(logits.shape)} strides {logits.stride()}")
    backend = _checks.backend(backend)
    device = logits.device
    values = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p, "seeds": seeds,
              "steps": steps}
    params = tuple(_per_row(name, value, rows, device) for name, value in values.items())
    if rows == 0:
        empty = logits.new_empty(0, dtype=torch.float32)
        return logits.new_empty(0, dtype=torch.int64), empty, empty.clone()
    return torch.ops.sleepcore.sample_tokens(logits, *params, backend)
