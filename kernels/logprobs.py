"""Triton row kernels for per-token log-probabilities and entropies (forward and logit gradient).

Same contract as the C++ CPU kernels in ``csrc/cpu/logprob_rows.h``; the fp32 maths is that of
``sleepcore.reference.logprobs.logprobs_from_logits`` (and autograd through it for the gradient).

Derivation (one row; z = logits / T, lse = logsumexp(z), p = softmax(z), id = the row's token):

* logp = z_id - lse;  H = -sum_j p_j log p_j = lse - sum_j p_j z_j.
* Online forward (one pass).  For a reference point m, let s = sum_j e^{z_j - m} and
  u = sum_j e^{z_j - m} (z_j - m) (every term <= 0 once m >= max z).  Then
      lse = m + log s,    sum_j p_j (z_j - m) = u / s,    H = log s - u / s.
  Both terms of H are >= 0 (s >= 1 and u <= 0 at m = max z), so H is a sum of non-negative
  parts: no cancellation, however large the logits (the naive lse - sum p z subtracts two numbers
  of size |z|).  Moving the reference from m to m' >= m rescales both with a = e^{m - m'}, d = m - m':
      e^{z - m'} = a e^{z - m},    e^{z - m'} (z - m') = a e^{z - m} ((z - m) + d),
  i.e.  s' = a s,  u' = a (u + d s).
* Gradient of L = g1 logp + g2 H (g1 = grad_logp, g2 = grad_entropy), with d logp / dz_j =
  [j == id] - p_j and dH / dz_j = -p_j (log p_j + H):
      dL/dz_j = g1 [j == id] - p_j (g1 + g2 (log p_j + H)),   grad = dL/dz / T  (one pass, given
  lse and H from the forward).  A -inf logit has p_j = 0 and contributes exactly 0 (log p_j is
  floored before it multiplies p_j, so 0 * -inf never happens).
* Base 2 inside the kernels: z2 = x * log2(e) / T, so each element costs one exp2 (a single MUFU
  instruction) and no separate scaling multiply; results are converted back with ln 2.

Kernel design (one program per row, int64 row offsets, BLOCK_V = min(4096, next_pow2(V)) tiles
looped along V in a fixed order, 8 warps from 2048 wide; fp32 accumulation; tile loads and stores
are 128-bit vectors when V and the row strides are multiples of 16, which Triton's argument
specialisation detects).  A row's outputs depend on that row only, never on R or the other rows.

* ``logprob_rows``: a single pass over the row.  The reference m is a scalar running max of the
  tiles (one block max-reduction per tile); s and u are BLOCK_V-lane fp32 vectors, reduced once at
  the end.  The rescale (a, d) runs only when a tile raises the max (a warp-uniform branch, rare
  after the first tiles), so the steady state costs per element: convert, multiply, max, subtract,
  floor, exp2, add, fma.  The token's logit is a single masked scalar load.
* ``logprob_grad_rows``: one pass: load, exp2, two fma, select, store.  Each element is loaded
  before the same lane stores to it, so ``grad`` may alias ``logits``.
* -inf logits (and the masked tail lanes, loaded as -inf): exponents are floored at -1e4 in base 2
  (2^-1e4 is 0 in fp32), so they give e = 0, e * t = 0 and never -inf - -inf.  A row needs at least
  one finite logit (an all -inf row has no distribution: its outputs are NaN, as in the reference).
* Token ids are not range-checked (that needs a host sync): an id >= V is masked out of the
  gather, so nothing outside the row is read or written; its logp is NaN (lse and entropy are
  still those of the row) and its gradient row is that of a token without a column
  (-p_j (g1 + g2 (log p_j + H)) / T).  A negative id marks an ignored row: logp, entropy and lse
  are 0 and its gradient row is 0, without reading its logits.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.0 / math.log(2.0))
_LN2 = tl.constexpr(math.log(2.0))
_EXP2_FLOOR = tl.constexpr(-1.0e4)  # base-2 exponents below this are -inf for our purposes: 2^-1e4 == 0
_MAX_BLOCK_V = 4096
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _load_z2(ptr, cols, mask, scale2):
    """Logits at ``cols`` as fp32 base-2 z2 = x log2(e) / T; -inf where masked."""
    return tl.load(ptr + cols, mask=mask, other=-float("inf")).to(tl.float32) * scale2


@triton.jit
def _online_row_stats(x_ptr, V, scale2, ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    """One pass: (m, s, u) in base 2 with m = max z2, s = sum 2^(z2 - m), u = sum 2^(z2 - m) (z2 - m)."""
    m = -float("inf")
    s = tl.zeros([BLOCK_V], tl.float32)
    u = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z2 = _load_z2(x_ptr, cols, cols < V, scale2)
        m_new = tl.maximum(m, tl.max(z2, axis=0))
        if m_new > m:  # move the reference to the new max: s' = a s, u' = a (u + d s), a = 2^d
            d = tl.maximum(m - m_new, _EXP2_FLOOR)  # m = -inf (s = u = 0): d floored, a = 0
            a = tl.exp2(d)
            if ENTROPY:
                u = a * (u + d * s)
            s = a * s
            m = m_new
        t = tl.maximum(z2 - tl.where(m == -float("inf"), 0.0, m), _EXP2_FLOOR)
        e = tl.exp2(t)
        s += e
        if ENTROPY:
            u += e * t
    return m, tl.sum(s, axis=0), tl.sum(u, axis=0)


@triton.jit
def _logprob_rows_kernel(x_ptr, x_stride, ids_ptr, logp_ptr, ent_ptr, lse_ptr, V, inv_t,
                         ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr += row * x_stride
    tid = tl.load(ids_ptr + row)
    if tid < 0:
        tl.store(logp_ptr + row, 0.0)
        tl.store(lse_ptr + row, 0.0)
        if ENTROPY:
            tl.store(ent_ptr + row, 0.0)
    else:
        m, s, u = _online_row_stats(x_ptr, V, inv_t * _LOG2E, ENTROPY, BLOCK_V)
        log2_s = tl.log2(s)
        lse = (m + log2_s) * _LN2
        in_row = tid < V  # not checked on the host: an id >= V reads nothing and gives NaN
        x_id = tl.load(x_ptr + tl.where(in_row, tid, 0), mask=in_row, other=float("nan")).to(tl.float32)
        tl.store(logp_ptr + row, x_id * inv_t - lse)
        tl.store(lse_ptr + row, lse)
        if ENTROPY:
            tl.store(ent_ptr + row, tl.maximum((log2_s - u / s) * _LN2, 0.0))


@triton.jit
def _logprob_grad_rows_kernel(x_ptr, x_stride, g_ptr, g_stride, ids_ptr, lse_ptr, ent_ptr, glogp_ptr, gent_ptr,
                              V, inv_t, HAS_GENT: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr += row * x_stride
    g_ptr += row * g_stride
    tid = tl.load(ids_ptr + row)
    if tid < 0:
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            tl.store(g_ptr + cols, tl.zeros([BLOCK_V], tl.float32).to(g_ptr.dtype.element_ty), mask=cols < V)
    else:
        col_id = tl.where(tid < V, tid, -1).to(tl.int32)  # an id >= V matches no column
        scale2 = inv_t * _LOG2E
        lse2 = tl.load(lse_ptr + row) * _LOG2E
        c1 = tl.load(glogp_ptr + row) * inv_t
        # dL/dz_j / T = c1 [j == id] - p_j (A + B t_j),  t_j = log2 p_j:  A = c1 + c2 H, B = c2 ln 2
        if HAS_GENT:
            c2 = tl.load(gent_ptr + row) * inv_t
            coef_a = c1 + c2 * tl.load(ent_ptr + row)
            coef_b = c2 * _LN2
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            t = tl.maximum(_load_z2(x_ptr, cols, cols < V, scale2) - lse2, _EXP2_FLOOR)
            p = tl.exp2(t)
            if HAS_GENT:
                g = tl.where(cols == col_id, c1, 0.0) - p * (coef_a + coef_b * t)
            else:
                g = tl.where(cols == col_id, c1, 0.0) - p * c1
            tl.store(g_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=cols < V)


# ----------------------------------------------------------------------------- launchers


def _check_logits(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.dtype not in _DTYPES or (x.shape[1] > 1 and x.stride(1) != 1):
        raise ValueError(f"{name} must be a [rows, vocab] float32/bfloat16/float16 tensor with unit column "
                         f"stride, got {x.dtype} {tuple(x.shape)} strides {x.stride()}")


def _check_rows(rows: int, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and (t.shape != (rows,) or t.dtype != torch.float32 or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous float32 [{rows}] tensor")


def _check_ids(token_ids: torch.Tensor, rows: int) -> torch.Tensor:
    if token_ids.shape != (rows,) or token_ids.dtype != torch.int64:
        raise ValueError(f"token_ids must be an int64 [{rows}] tensor")
    return token_ids.contiguous()


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"need temperature > 0, got {temperature}")


def _launch_cfg(vocab: int) -> dict:
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(vocab))
    return dict(BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4)


def logprob_rows(logits: torch.Tensor, token_ids: torch.Tensor, logp: torch.Tensor, entropy: torch.Tensor | None,
                 lse: torch.Tensor, *, temperature: float) -> None:
    """Per-row token log-probability, entropy and log-sum-exp of ``logits / temperature``.

    logits: [R, V] raw logits, fp32/bf16/fp16, unit column stride, any row stride.
    token_ids: [R] int64; a negative id marks an ignored row (logp = entropy = lse = 0, its logits
    are not read).  Ids >= V are not checked (no host sync): such a row reads nothing outside itself
    and gets logp = NaN.
    logp, lse: [R] fp32 outputs, logp = z[id] - lse, lse = logsumexp(z), z = logits / temperature.
    entropy: [R] fp32 output, -sum p log p (>= 0), or None to skip it (a cheaper pass).
    One read of the logits; a row's results depend on that row alone.
    """
    _check_logits("logits", logits)
    _check_temperature(temperature)
    rows, vocab = logits.shape
    token_ids = _check_ids(token_ids, rows)
    _check_rows(rows, logp=logp, entropy=entropy, lse=lse)
    if rows == 0:
        return
    _logprob_rows_kernel[(rows,)](
        logits, logits.stride(0), token_ids, logp, lse if entropy is None else entropy, lse, vocab,
        1.0 / temperature, ENTROPY=entropy is not None, **_launch_cfg(vocab))


def logprob_grad_rows(logits: torch.Tensor, token_ids: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor | None,
                      grad_logp: torch.Tensor, grad_entropy: torch.Tensor | None, grad: torch.Tensor, *,
                      temperature: float) -> None:
    """Gradient w.r.t. the raw logits of ``sum_r grad_logp[r] logp[r] + grad_entropy[r] entropy[r]``.

    logits, token_ids, temperature: as in :func:`logprob_rows`; lse and entropy: that call's outputs
    for the same rows (entropy may be None when grad_entropy is None).
    grad_logp: [R] fp32; grad_entropy: [R] fp32 or None (treated as 0).
    grad: [R, V] output in the logits' dtype, unit column stride, any row stride; may be ``logits``
    itself (same strides).  grad[r, j] = (g1 ([j == id] - p_j) - g2 p_j (log p_j + H)) / T; ignored
    rows (id < 0) get a zero row.  One read of the logits and one write of ``grad``.
    """
    _check_logits("logits", logits)
    _check_logits("grad", grad)
    _check_temperature(temperature)
    rows, vocab = logits.shape
    if grad.shape != logits.shape or grad.dtype != logits.dtype:
        raise ValueError("grad must have the logits' shape and dtype")
    if grad.data_ptr() == logits.data_ptr() and grad.stride() != logits.stride():
        raise ValueError("grad aliasing logits must have the same strides")
    if grad_entropy is not None and entropy is None:
        raise ValueError("grad_entropy needs the forward's entropy")
    token_ids = _check_ids(token_ids, rows)
    _check_rows(rows, lse=lse, entropy=entropy, grad_logp=grad_logp, grad_entropy=grad_entropy)
    if rows == 0:
        return
    has_gent = grad_entropy is not None
    _logprob_grad_rows_kernel[(rows,)](
        logits, logits.stride(0), grad, grad.stride(0), token_ids, lse, entropy if has_gent else lse, grad_logp,
        grad_entropy if has_gent else grad_logp, vocab, 1.0 / temperature, HAS_GENT=has_gent,
        **_launch_cfg(vocab))
