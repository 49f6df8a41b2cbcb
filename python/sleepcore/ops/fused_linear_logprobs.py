"""``fused_linear_logprobs``: per-token log-probs and entropies straight from hidden states.

With ``z = (hidden @ weight.T + bias) / T``, ``p = softmax(z)`` and ``y`` the token id:

* ``logp = z_y - logsumexp(z)`` and ``entropy = logsumexp(z) - sum_j p_j z_j``;
* ``d logp / d z_j = [j == y] - p_j`` and ``d entropy / d z_j = -p_j (log p_j + entropy)``.

Forward runs row chunks (one logits GEMM each) through the row kernel and keeps only three floats
per row (logp, entropy, log-sum-exp). Backward recomputes each chunk's logits, writes the logit
gradient in place, and runs the two gradient GEMMs: ``N x V`` is never materialised. The rollout
sampler uses this same function, so rollout and trainer log-probs agree by construction; chunks
below ``MIN_GEMM_ROWS`` rows are zero-padded so a row's result does not depend on its batch.

16-bit inputs on the CPU are computed in float32 (an fp32 copy of the weight per call, results
and gradients cast back): CPU GEMMs cannot return fp32 from 16-bit operands, and logits rounded
to 16 bits before the softmax made the fp16 weight gradient miss DESIGN.md's 16-bit rule (0.042
against plain PyTorch's 0.015, tests/ops/vocab_parallel seed 3973723359); on CPUs without native
16-bit units fp32 GEMMs are also several times faster.

With a ``process_group`` (or a DTensor weight) the weight is this rank's vocabulary shard: the
``sleepcore::vocab_parallel_linear_logprobs`` pair of ops runs the same loop with the row
functions of :mod:`sleepcore.ops.vocab_parallel_rows` (one all-gather of per-row statistics per
chunk) and all-reduces the hidden-state gradient; see :mod:`sleepcore.ops._vocab_parallel`.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from sleepcore.ops import _checks, _vocab_parallel, vocab_parallel_rows
from sleepcore.ops._linear_chunks import cpu_float32, default_chunk_size, grads_in_dtypes, linear_chunks
from sleepcore.ops._vocab_parallel import VocabShard
from sleepcore.ops.fused_linear_jsd import prepare_linear_inputs
from sleepcore.ops.logprob_rows import logprob_grad_rows, logprob_rows

MIN_GEMM_ROWS = 32


def row_functions(shard: VocabShard | None):
    """The ``(logprob_rows, logprob_grad_rows)`` pair for one device (None) or a vocabulary shard."""
    if shard is None:
        return logprob_rows, logprob_grad_rows
    return (functools.partial(vocab_parallel_rows.logprob_rows, shard=shard),
            functools.partial(vocab_parallel_rows.logprob_grad_rows, shard=shard))


def _forward(hidden, weight, token_ids, bias, temperature, chunk_size, backend, with_entropy, shard=None):
    hidden, weight, bias = cpu_float32(hidden, weight, bias)
    rows = hidden.shape[0]
    logp = hidden.new_empty(rows, dtype=torch.float32)
    lse = hidden.new_empty(rows, dtype=torch.float32)
    entropy = hidden.new_empty(rows if with_entropy else 0, dtype=torch.float32)
    forward_rows = row_functions(shard)[0]

    def rows_kernel(logits, chunk, _grad):
        forward_rows(logits, token_ids[chunk], logp[chunk], entropy[chunk] if with_entropy else None, lse[chunk],
                     temperature=temperature, backend=backend)

    with torch.no_grad():
        linear_chunks(hidden, weight, bias, rows_kernel, chunk_size=chunk_size, min_gemm_rows=MIN_GEMM_ROWS)
    return logp, entropy, lse


def _backward_impl(grad_logp, grad_entropy, hidden, weight, token_ids, bias, lse, entropy, temperature, chunk_size,
                   backend, grad_hidden, grad_weight, grad_bias, shard=None):
    grad_rows = row_functions(shard)[1]
    inputs = (hidden, weight, bias)
    hidden, weight, bias = cpu_float32(*inputs)

    def rows_kernel(logits, chunk, grad):
        grad_rows(logits, token_ids[chunk], lse[chunk], None if entropy is None else entropy[chunk], grad_logp[chunk],
                  None if grad_entropy is None else grad_entropy[chunk], grad, temperature=temperature,
                  backend=backend)

    with torch.no_grad():
        grads = linear_chunks(hidden, weight, bias, rows_kernel, chunk_size=chunk_size, grad_hidden=grad_hidden,
                              grad_weight=grad_weight, grad_bias=grad_bias, min_gemm_rows=MIN_GEMM_ROWS)
    if shard is not None:
        shard.sum_(grads[0])
    return grads_in_dtypes(grads, *inputs)


@torch.library.custom_op("sleepcore::fused_linear_logprobs", mutates_args=())
def _fused_linear_logprobs(hidden: Tensor, weight: Tensor, token_ids: Tensor, bias: Optional[Tensor],
                           temperature: float, chunk_size: int, backend: str,
                           with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(hidden, weight, token_ids, bias, temperature, chunk_size, backend, with_entropy)


@torch.library.custom_op("sleepcore::vocab_parallel_linear_logprobs", mutates_args=())
def _vocab_parallel_linear_logprobs(hidden: Tensor, weight: Tensor, token_ids: Tensor, bias: Optional[Tensor],
                                    temperature: float, chunk_size: int, backend: str, with_entropy: bool,
                                    group_name: str, vocab_start: int,
                                    vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    shard = VocabShard(group_name, vocab_start, weight.shape[0], vocab_size)
    return _forward(hidden, weight, token_ids, bias, temperature, chunk_size, backend, with_entropy, shard)


def _fake_forward(hidden, weight, token_ids, bias, temperature, chunk_size, backend, with_entropy, *_shard):
    rows = hidden.shape[0]
    make = lambda n: hidden.new_empty(n, dtype=torch.float32)  # noqa: E731
    return make(rows), make(rows if with_entropy else 0), make(rows)


@torch.library.custom_op("sleepcore::fused_linear_logprobs_backward", mutates_args=())
def _fused_linear_logprobs_backward(
    grad_logp: Tensor, grad_entropy: Optional[Tensor], hidden: Tensor, weight: Tensor, token_ids: Tensor,
    bias: Optional[Tensor], lse: Tensor, entropy: Optional[Tensor], temperature: float, chunk_size: int,
    backend: str, grad_hidden: bool, grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_logp, grad_entropy, hidden, weight, token_ids, bias, lse, entropy, temperature,
                          chunk_size, backend, grad_hidden, grad_weight, grad_bias)


@torch.library.custom_op("sleepcore::vocab_parallel_linear_logprobs_backward", mutates_args=())
def _vocab_parallel_linear_logprobs_backward(
    grad_logp: Tensor, grad_entropy: Optional[Tensor], hidden: Tensor, weight: Tensor, token_ids: Tensor,
    bias: Optional[Tensor], lse: Tensor, entropy: Optional[Tensor], temperature: float, chunk_size: int,
    backend: str, group_name: str, vocab_start: int, vocab_size: int, grad_hidden: bool, grad_weight: bool,
    grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    shard = VocabShard(group_name, vocab_start, weight.shape[0], vocab_size)
    return _backward_impl(grad_logp, grad_entropy, hidden, weight, token_ids, bias, lse, entropy, temperature,
                          chunk_size, backend, grad_hidden, grad_weight, grad_bias, shard)


def _fake_backward(grad_logp, grad_entropy, hidden, weight, token_ids, bias, lse, entropy, temperature, chunk_size,
                   backend, *shard_and_flags):
    grad_hidden, grad_weight, grad_bias = shard_and_flags[-3:]
    empty = hidden.new_empty(0)
    return (hidden.new_empty(hidden.shape) if grad_hidden else empty,
            weight.new_empty(weight.shape) if grad_weight else empty,
            bias.new_empty(bias.shape) if grad_bias else empty)


def _setup_context(ctx, inputs, output):
    hidden, weight, token_ids, bias, temperature, chunk_size, backend, with_entropy, *shard_args = inputs
    _, entropy, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.options = (temperature, chunk_size, backend, with_entropy, bias is not None)
    ctx.shard_args = tuple(shard_args)
    ctx.save_for_backward(hidden, weight, token_ids, bias, lse, entropy)


def _backward(ctx, grad_logp, grad_entropy, _grad_lse):
    hidden, weight, token_ids, bias, lse, entropy = ctx.saved_tensors
    temperature, chunk_size, backend, with_entropy, has_bias = ctx.options
    if not with_entropy:
        grad_entropy = entropy = None
    flags = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[3])
    op = (torch.ops.sleepcore.vocab_parallel_linear_logprobs_backward if ctx.shard_args
          else torch.ops.sleepcore.fused_linear_logprobs_backward)
    grads = op(grad_logp.float().contiguous(), None if grad_entropy is None else grad_entropy.float().contiguous(),
               hidden, weight, token_ids, bias, lse, entropy, temperature, chunk_size, backend, *ctx.shard_args,
               *flags)
    grad_hidden, grad_weight, grad_bias = (g if wanted else None for g, wanted in zip(grads, flags))
    return grad_hidden, grad_weight, None, grad_bias, *(None,) * (4 + len(ctx.shard_args))


for _op in (_fused_linear_logprobs, _vocab_parallel_linear_logprobs):
    _op.register_fake(_fake_forward)
    _op.register_autograd(_backward, setup_context=_setup_context)
for _op in (_fused_linear_logprobs_backward, _vocab_parallel_linear_logprobs_backward):
    _op.register_fake(_fake_backward)


def fused_linear_logprobs(hidden, weight, token_ids, *, temperature=1.0, bias=None, ignore_index=-100,
                          return_entropy=True, chunk_size=None, backend="auto", process_group=None, vocab_start=None):
    """Per-token ``log_softmax(hidden @ weight.T / T)[token]`` and entropy, without ``N x V``.

    Args:
        hidden: ``[N, H]`` or ``[B, T, H]``, fp32/bf16/fp16. weight: ``[V, H]``; bias: optional ``[V]``.
        token_ids: int64/int32 ``[N]`` or ``[B, T]``; ``ignore_index`` marks ignored positions.
        temperature: > 0, divides the logits.
        return_entropy: also return the entropy of ``softmax(logits / T)`` (differentiable).
        chunk_size: rows per chunk (default from V, the dtype and the device); results do not
            depend on it, nor on the other rows in the call.
        backend: ``"auto"`` (CPU: ``_C``; CUDA: Triton), ``"cpu"`` or ``"triton"``.
        process_group: None (one device), or the ``torch.distributed`` group over which ``weight``
            and ``bias`` are split along the vocabulary (tensor parallel): then they are this
            rank's rows (``[V_local, H]``, ``[V_local]``), every rank passes the same hidden states
            and token ids, and every rank gets the full ``lm_head``'s results, the full hidden
            gradient and its own shard's weight gradient. A DTensor weight placed ``(Shard(0),)``
            on a 1-D mesh brings its mesh's group. See :mod:`sleepcore.ops._vocab_parallel`.
        vocab_start: with ``process_group``, this rank's first vocabulary id; None lays the
            shards out in group-rank order.

    Returns:
        ``(logp, entropy)``: float32 tensors of ``token_ids``' shape, 0 at ignored positions;
        ``entropy`` is None when ``return_entropy=False``. Both are differentiable w.r.t.
        hidden, weight and bias. ``logp <= 0`` and ``entropy >= 0``.

    Raises:
        TypeError / ValueError naming the argument; on CPU, ``ValueError`` for an id outside
        ``[0, V)`` (on CUDA such a row reads nothing out of bounds, but its result is meaningless;
        with ``process_group`` the check is made on every device).
    """
    group, (weight, bias) = _vocab_parallel.local_shards(process_group, vocab_start, {"hidden": hidden},
                                                         {"weight": weight, "bias": bias})
    flat_hidden, weight = prepare_linear_inputs(hidden, weight, bias, hidden_name="hidden", weight_name="weight",
                                                bias_name="bias")
    _checks.tensor("token_ids", token_ids, ndims=(1, 2), dtypes=(torch.int64, torch.int32))
    if token_ids.shape != hidden.shape[:-1]:
        raise ValueError(f"token_ids must have shape {tuple(hidden.shape[:-1])} (one per hidden row), "
                         f"got {tuple(token_ids.shape)}")
    device = _checks.same_device(hidden=hidden, weight=weight, bias=bias, token_ids=token_ids)
    temperature, backend = _checks.temperature(temperature), _checks.backend(backend)
    chunk = _checks.chunk_size(chunk_size)
    flat_ids = token_ids.reshape(-1).to(torch.int64)
    flat_ids = torch.where(flat_ids == ignore_index, torch.full_like(flat_ids, -1), flat_ids).contiguous()
    shard = _vocab_parallel.layout(group, vocab_start, weight.shape[0], hidden=flat_hidden, hidden_name="hidden",
                                   weight_name="weight", chunk_size=chunk, ids=flat_ids)
    rows, vocab = flat_hidden.shape[0], weight.shape[0] if shard is None else shard.vocab
    chunk = chunk or default_chunk_size(rows, vocab, flat_hidden.dtype, device)
    inputs = (flat_hidden, weight, flat_ids, bias, temperature, chunk, backend, bool(return_entropy))
    if shard is None:
        logp, entropy, _ = torch.ops.sleepcore.fused_linear_logprobs(*inputs)
    else:
        logp, entropy, _ = torch.ops.sleepcore.vocab_parallel_linear_logprobs(*inputs, *shard.op_args)
    shape = token_ids.shape
    return logp.reshape(shape), entropy.reshape(shape) if return_entropy else None
