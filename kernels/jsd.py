"""Triton row kernels for the generalized JSD (full vocabulary and top-k teacher).

Same contract as the C++ CPU kernels in ``csrc/cpu/divergence_rows.h``; the fp32 maths is that
of ``sleepcore.reference.distill`` (``jsd_from_logprobs`` and ``topk_bins``).

Length: about 400 lines, over the ~300 guideline: the full-vocabulary and top-k kernels share the
per-bin helpers below, and splitting them would duplicate those helpers or hide them in a third file.

Derivation (one row; z = logits / T, p = softmax(z_student), q = softmax(z_teacher)):

* Per bin b the loss term depends only on (log p_b, log q_b):
    beta == 0 (mode 0):  q (log q - log p)
    beta == 1 (mode 1):  p (log p - log q)
    else      (mode 2):  beta q (log q - log m) + (1 - beta) p (log p - log m),
                         m = (1 - beta) p + beta q
  with xlogy semantics: a term whose weight prob is 0 is 0.
* a_b = dL / d log p_b:  mode 0: -q;  mode 1: p (log p - log q + 1);  mode 2: (1 - beta) p (log p - log m)
  (in mode 2 the two d log m / d log p contributions cancel: beta q + (1 - beta) p = m).
* Full vocabulary: log p_j = z_j - lse(z), so dL/dz_j = a_j - p_j * sum_i a_i.
* Top-k: bins are the k ids and a rest bin.  log p_i = z_i - lse(z);
  log p_rest = lse_rest(z) - lse(z) with lse_rest the log-sum-exp over the columns that are NOT
  among the row's ids, floored at log(1e-30); q_rest = max(0, 1 - sum_i q_i), also floored.  With pi = softmax(z)
  and sigma_j = exp(z_j - lse_rest):
    dL/dz_j = [j in ids] a_j + [j not in ids] a_rest sigma_j - pi_j (sum_i a_i + a_rest),
  and a_rest := 0 when the student floor is active (no gradient through a clamped bin).
  For j not in ids, a_rest sigma_j - pi_j S = sigma_j (a_rest - exp(lse_rest - lse) S): one exp.
* The raw-logit gradient written to ``grad`` is row_scale / T * dL/dz.

Kernel design (one program per row, int64 row offsets, BLOCK_V = min(4096, next_pow2(V)) tiles
looped along V, 8 warps; fp32 accumulation; tile loads and stores are 128-bit vectors when V and
the row strides are multiples of 16, which Triton's argument specialisation detects):

* ``jsd_rows``: pass 1 folds both rows into online (max, sum-exp) pairs -> lse_s, lse_t;
  pass 2 accumulates the loss and sum_a in BLOCK_V-lane fp32 vectors (one reduction at the end);
  pass 3 (grad only) recomputes a_j from the logits and writes the gradient.  Each element is
  loaded before the same lane stores to it, so ``grad`` may alias ``student``.
* ``topk_jsd_rows``: a tiny kernel first sets one bit per (row, id) in a [R, ceil(V/32)] int32
  bitmask (atomic_or; R*V/8 bytes of scratch, no sort, any id order).  Tile passes read the
  membership of column j as bit j%32 of word j//32 (a broadcast, L1-resident load), so lse_rest is
  an exact online log-sum-exp over the non-member columns (no subtraction of sum-exps, hence no
  cancellation when the rest is tiny or empty).  lse(z) = logaddexp(lse_rest, lse over the ids),
  both sums of positive terms.  Membership is applied with ``where`` after bounds-masked loads and
  stores, so tile accesses stay 128-bit vectorised: the grad tile pass stores every column, writing
  the student's own value back into member columns (their logits survive when grad is student);
  after a CTA barrier a last pass over the ids reads those logits and stores the ids' gradients.
* Ids are not range-checked (that needs a host sync): an id outside [0, V) is masked out of every
  load, store and sum, i.e. its bin is dropped, and the row's result is meaningless but memory
  safe.  Duplicate ids are outside the contract (the loss counts them twice).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_REST_LOG_FLOOR = tl.constexpr(math.log(1e-30))
_MAX_BLOCK_V = 4096
_MAX_BLOCK_K = 1024
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- shared helpers


@triton.jit
def _load_z(ptr, cols, mask, inv_t):
    """Logits at ``cols`` as fp32 z = x / T; -inf where masked (a zero-probability bin)."""
    return tl.load(ptr + cols, mask=mask, other=-float("inf")).to(tl.float32) * inv_t


@triton.jit
def _lse_step(m, s, x):
    """Fold the tile ``x`` into a running (max, sum of exp(. - max)); -inf entries add nothing."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    shift = tl.where(m_new == -float("inf"), 0.0, m_new)
    return m_new, s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)


@triton.jit
def _logaddexp(a, b):
    mx = tl.maximum(a, b)
    shift = tl.where(mx == -float("inf"), 0.0, mx)
    return shift + tl.log(tl.exp(a - shift) + tl.exp(b - shift))


@triton.jit
def _bin_terms(lp, lq, beta, log_1mb, log_b, MODE: tl.constexpr):
    """Per-bin (loss term, a = dL/dlog p, p) from fp32 log-probs; 0 where the weight prob is 0."""
    p = tl.exp(lp)
    if MODE == 0:
        q = tl.exp(lq)
        loss = tl.where(q > 0, q * (lq - lp), 0.0)
        a = -q
    elif MODE == 1:
        loss = tl.where(p > 0, p * (lp - lq), 0.0)
        a = tl.where(p > 0, p * (lp - lq + 1.0), 0.0)
    else:
        q = tl.exp(lq)
        # log m >= max(lp + log(1-beta), lq + log(beta)): the bound only matters if m underflows.
        lm = tl.maximum(tl.log((1.0 - beta) * p + beta * q), tl.maximum(lp + log_1mb, lq + log_b))
        a = tl.where(p > 0, (1.0 - beta) * p * (lp - lm), 0.0)
        loss = a + tl.where(q > 0, beta * q * (lq - lm), 0.0)
    return loss, a, p


@triton.jit
def _zero_row(g_ptr, V, BLOCK_V: tl.constexpr):
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        tl.store(g_ptr + cols, tl.zeros([BLOCK_V], tl.float32).to(g_ptr.dtype.element_ty), mask=cols < V)


# ----------------------------------------------------------------------------- full vocabulary


@triton.jit
def _pair_lse(s_ptr, t_ptr, V, inv_t, BLOCK_V: tl.constexpr):
    """Pass 1: lse of student and teacher z in one sweep over the row."""
    m_s = -float("inf")
    m_t = -float("inf")
    sum_s = 0.0
    sum_t = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        m_s, sum_s = _lse_step(m_s, sum_s, _load_z(s_ptr, cols, cols < V, inv_t))
        m_t, sum_t = _lse_step(m_t, sum_t, _load_z(t_ptr, cols, cols < V, inv_t))
    return m_s + tl.log(sum_s), m_t + tl.log(sum_t)


@triton.jit
def _jsd_loss(s_ptr, t_ptr, V, lse_s, lse_t, inv_t, beta, log_1mb, log_b,
              MODE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Pass 2: the row's loss and sum_j a_j."""
    acc_loss = tl.zeros([BLOCK_V], tl.float32)
    acc_a = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        lp = _load_z(s_ptr, cols, cols < V, inv_t) - lse_s
        lq = _load_z(t_ptr, cols, cols < V, inv_t) - lse_t
        loss, a, _ = _bin_terms(lp, lq, beta, log_1mb, log_b, MODE)
        acc_loss += loss
        acc_a += a
    return tl.sum(acc_loss, axis=0), tl.sum(acc_a, axis=0)


@triton.jit
def _jsd_grad(s_ptr, t_ptr, g_ptr, V, lse_s, lse_t, inv_t, sum_a, coef, beta, log_1mb, log_b,
              MODE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Pass 3: grad_j = coef * (a_j - p_j sum_a); each lane loads its element before storing it."""
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        lp = _load_z(s_ptr, cols, cols < V, inv_t) - lse_s
        lq = _load_z(t_ptr, cols, cols < V, inv_t) - lse_t
        _, a, p = _bin_terms(lp, lq, beta, log_1mb, log_b, MODE)
        g = coef * (a - p * sum_a)
        tl.store(g_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=cols < V)


@triton.jit
def _jsd_rows_kernel(s_ptr, s_stride, t_ptr, t_stride, g_ptr, g_stride, scale_ptr, loss_ptr, V,
                     inv_t, beta, log_1mb, log_b,
                     MODE: tl.constexpr, HAS_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_ptr += row * s_stride
    t_ptr += row * t_stride
    g_ptr += row * g_stride
    scale = tl.load(scale_ptr + row)
    if scale == 0.0:
        tl.store(loss_ptr + row, 0.0)
        if HAS_GRAD:
            _zero_row(g_ptr, V, BLOCK_V)
    else:
        lse_s, lse_t = _pair_lse(s_ptr, t_ptr, V, inv_t, BLOCK_V)
        loss, sum_a = _jsd_loss(s_ptr, t_ptr, V, lse_s, lse_t, inv_t, beta, log_1mb, log_b, MODE, BLOCK_V)
        tl.store(loss_ptr + row, loss)
        if HAS_GRAD:
            _jsd_grad(s_ptr, t_ptr, g_ptr, V, lse_s, lse_t, inv_t, sum_a, scale * inv_t,
                      beta, log_1mb, log_b, MODE, BLOCK_V)


# ----------------------------------------------------------------------------- top-k teacher


@triton.jit
def _mark_ids_kernel(ids_ptr, ids_stride, bits_ptr, bits_stride, V, K, BLOCK_K: tl.constexpr):
    """Set bit id % 32 of word id // 32 in the row's bitmask for each in-range id."""
    row = tl.program_id(0).to(tl.int64)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        ids = tl.load(ids_ptr + row * ids_stride + offs, mask=offs < K, other=-1)
        ok = (ids >= 0) & (ids < V)
        col = tl.where(ok, ids, 0).to(tl.int32)
        bit = tl.full([BLOCK_K], 1, tl.int32) << (col & 31)
        tl.atomic_or(bits_ptr + row * bits_stride + (col >> 5), bit, mask=ok)


@triton.jit
def _is_member(bits_ptr, cols, mask):
    words = tl.load(bits_ptr + (cols >> 5), mask=mask, other=0)
    return ((words >> (cols & 31)) & 1) != 0


@triton.jit
def _load_ids(ids_ptr, offs, V, K):
    """Id columns at ``offs`` (0 where not in [0, V)) and their in-range flags."""
    ids = tl.load(ids_ptr + offs, mask=offs < K, other=-1)
    valid = (ids >= 0) & (ids < V)
    return tl.where(valid, ids, 0), valid


@triton.jit
def _load_lq(lq_ptr, offs, valid):
    return tl.load(lq_ptr + offs, mask=valid, other=-float("inf")).to(tl.float32)


@triton.jit
def _topk_lse(s_ptr, ids_ptr, bits_ptr, V, K, inv_t, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pass 1: (lse over non-member columns, lse over the whole row)."""
    m = -float("inf")
    s = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = _load_z(s_ptr, cols, cols < V, inv_t)
        m, s = _lse_step(m, s, tl.where(_is_member(bits_ptr, cols, cols < V), -float("inf"), z))
    lse_rest = m + tl.log(s)
    m = -float("inf")
    s = 0.0
    for k0 in range(0, K, BLOCK_K):
        cols, valid = _load_ids(ids_ptr, k0 + tl.arange(0, BLOCK_K), V, K)
        m, s = _lse_step(m, s, _load_z(s_ptr, cols, valid, inv_t))
    return lse_rest, _logaddexp(lse_rest, m + tl.log(s))


@triton.jit
def _topk_loss(s_ptr, ids_ptr, lq_ptr, V, K, lse, inv_t, beta, log_1mb, log_b,
               MODE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pass 2 over the ids: (loss, sum_i a_i, sum_i q_i) of the k id bins."""
    acc_loss = tl.zeros([BLOCK_K], tl.float32)
    acc_a = tl.zeros([BLOCK_K], tl.float32)
    acc_q = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        cols, valid = _load_ids(ids_ptr, offs, V, K)
        lq = _load_lq(lq_ptr, offs, valid)
        lp = _load_z(s_ptr, cols, valid, inv_t) - lse
        loss, a, _ = _bin_terms(lp, lq, beta, log_1mb, log_b, MODE)
        acc_loss += loss
        acc_a += a
        acc_q += tl.exp(lq)
    return tl.sum(acc_loss, axis=0), tl.sum(acc_a, axis=0), tl.sum(acc_q, axis=0)


@triton.jit
def _topk_grad(s_ptr, ids_ptr, lq_ptr, bits_ptr, g_ptr, V, K, lse_rest, lse, inv_t, a_rest, sum_a,
               coef, beta, log_1mb, log_b, MODE: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pass 3: every column tile by tile, member columns getting the student's own value back
    (so the logits at the ids survive when grad is student), then the id columns."""
    rest_shift = tl.where(lse_rest == -float("inf"), 0.0, lse_rest)
    rest_coef = coef * (a_rest - tl.exp(lse_rest - lse) * sum_a)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(s_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)
        g = tl.where(_is_member(bits_ptr, cols, cols < V), x, rest_coef * tl.exp(x * inv_t - rest_shift))
        tl.store(g_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=cols < V)
    tl.debug_barrier()  # the id loop rewrites member columns that other threads of the program stored
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        cols, valid = _load_ids(ids_ptr, offs, V, K)
        lq = _load_lq(lq_ptr, offs, valid)
        lp = _load_z(s_ptr, cols, valid, inv_t) - lse
        _, a, p = _bin_terms(lp, lq, beta, log_1mb, log_b, MODE)
        tl.store(g_ptr + cols, (coef * (a - p * sum_a)).to(g_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _topk_jsd_rows_kernel(s_ptr, s_stride, ids_ptr, ids_stride, lq_ptr, lq_stride, bits_ptr, bits_stride,
                          g_ptr, g_stride, scale_ptr, loss_ptr, V, K, inv_t, beta, log_1mb, log_b,
                          MODE: tl.constexpr, HAS_GRAD: tl.constexpr,
                          BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_ptr += row * s_stride
    ids_ptr += row * ids_stride
    lq_ptr += row * lq_stride
    bits_ptr += row * bits_stride
    g_ptr += row * g_stride
    scale = tl.load(scale_ptr + row)
    if scale == 0.0:
        tl.store(loss_ptr + row, 0.0)
        if HAS_GRAD:
            _zero_row(g_ptr, V, BLOCK_V)
    else:
        lse_rest, lse = _topk_lse(s_ptr, ids_ptr, bits_ptr, V, K, inv_t, BLOCK_V, BLOCK_K)
        loss, sum_a, sum_q = _topk_loss(s_ptr, ids_ptr, lq_ptr, V, K, lse, inv_t, beta, log_1mb, log_b,
                                        MODE, BLOCK_K)
        lp_rest = lse_rest - lse
        lq_rest = tl.maximum(tl.log(tl.maximum(1.0 - sum_q, 0.0)), _REST_LOG_FLOOR)
        loss_rest, a_rest, _ = _bin_terms(tl.maximum(lp_rest, _REST_LOG_FLOOR), lq_rest,
                                          beta, log_1mb, log_b, MODE)
        a_rest = tl.where(lp_rest < _REST_LOG_FLOOR, 0.0, a_rest)
        tl.store(loss_ptr + row, loss + loss_rest)
        if HAS_GRAD:
            _topk_grad(s_ptr, ids_ptr, lq_ptr, bits_ptr, g_ptr, V, K, lse_rest, lse, inv_t, a_rest,
                       sum_a + a_rest, scale * inv_t, beta, log_1mb, log_b, MODE, BLOCK_V, BLOCK_K)


# ----------------------------------------------------------------------------- launchers


def _check_logits(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.dtype not in _DTYPES or (x.shape[1] > 1 and x.stride(1) != 1):
        raise ValueError(f"{name} must be a [rows, vocab] float32/bfloat16/float16 tensor with unit column "
                         f"stride, got {x.dtype} {tuple(x.shape)} strides {x.stride()}")


def _check_common(student, row_scale, loss, grad, beta: float, temperature: float) -> None:
    _check_logits("student", student)
    rows = student.shape[0]
    for name, t in (("row_scale", row_scale), ("loss", loss)):
        if t.shape != (rows,) or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous float32 [{rows}] tensor")
    if grad is not None:
        _check_logits("grad", grad)
        if grad.shape != student.shape or grad.dtype != student.dtype:
            raise ValueError("grad must have the student's shape and dtype")
        if grad.data_ptr() == student.data_ptr() and grad.stride() != student.stride():
            raise ValueError("grad aliasing student must have the same strides")
    if not 0.0 <= beta <= 1.0 or not temperature > 0.0:
        raise ValueError(f"need 0 <= beta <= 1 and temperature > 0, got {beta}, {temperature}")


def _beta_args(beta: float) -> dict:
    """MODE constexpr (0: forward KL, 1: reverse KL, 2: mixture) and the mixture's log weights."""
    if beta == 0.0 or beta == 1.0:
        return dict(MODE=int(beta), beta=float(beta), log_1mb=0.0, log_b=0.0)
    return dict(MODE=2, beta=float(beta), log_1mb=math.log1p(-beta), log_b=math.log(beta))


def _launch_cfg(vocab: int) -> dict:
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(vocab))
    return dict(BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4)


def jsd_rows(student: torch.Tensor, teacher: torch.Tensor, row_scale: torch.Tensor, loss: torch.Tensor,
             grad: torch.Tensor | None, *, beta: float, temperature: float) -> None:
    """Per-row generalized JSD of raw logits, written into ``loss`` (and ``grad``).

    student, teacher: [R, V] logits, fp32/bf16/fp16 (same dtype), unit column stride, any row stride.
    row_scale: [R] fp32; a row with scale exactly 0 gets loss 0 and a zero grad row.
    loss: [R] fp32 output, the unscaled per-row divergence.
    grad: [R, V] output in the student's dtype (may be ``student`` itself), or None for forward only;
    grad[r, j] = row_scale[r] * d loss[r] / d student[r, j].
    beta: TRL convention (0: KL(teacher || student), 1: KL(student || teacher)); temperature > 0.
    """
    _check_common(student, row_scale, loss, grad, beta, temperature)
    _check_logits("teacher", teacher)
    if teacher.shape != student.shape or teacher.dtype != student.dtype:
        raise ValueError("teacher must have the student's shape and dtype")
    rows, vocab = student.shape
    if rows == 0:
        return
    g = loss if grad is None else grad
    _jsd_rows_kernel[(rows,)](
        student, student.stride(0), teacher, teacher.stride(0), g, g.stride(0), row_scale, loss, vocab,
        1.0 / temperature, HAS_GRAD=grad is not None, **_beta_args(beta), **_launch_cfg(vocab))


def topk_jsd_rows(student: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                  row_scale: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor | None, *,
                  beta: float, temperature: float) -> None:
    """Per-row generalized JSD over k + 1 bins (the teacher's top-k ids and a rest bin).

    student: [R, V] logits, fp32/bf16/fp16, unit column stride, any row stride.
    teacher_ids: [R, k] int64, distinct ids in [0, V) per row (not checked: an out-of-range id's
    bin is dropped without touching memory outside the row), unit column stride.
    teacher_logprobs: [R, k] fp32 teacher log-probs used as given (no temperature), unit column stride.
    row_scale, loss, grad, beta, temperature: as in :func:`jsd_rows`.
    Scratch: a [R, ceil(V / 32)] int32 membership bitmask.
    """
    _check_common(student, row_scale, loss, grad, beta, temperature)
    rows, vocab = student.shape
    k = teacher_ids.shape[-1] if teacher_ids.dim() == 2 else -1
    if teacher_ids.shape != (rows, k) or teacher_ids.dtype != torch.int64 or k < 1:
        raise ValueError(f"teacher_ids must be an int64 [{rows}, k >= 1] tensor")
    if teacher_logprobs.shape != (rows, k) or teacher_logprobs.dtype != torch.float32:
        raise ValueError(f"teacher_logprobs must be a float32 [{rows}, {k}] tensor")
    if rows == 0:
        return
    teacher_ids = teacher_ids if teacher_ids.stride(1) == 1 else teacher_ids.contiguous()
    teacher_logprobs = teacher_logprobs if teacher_logprobs.stride(1) == 1 else teacher_logprobs.contiguous()
    block_k = min(_MAX_BLOCK_K, triton.next_power_of_2(k))
    bits = torch.zeros(rows, triton.cdiv(vocab, 32), dtype=torch.int32, device=student.device)
    _mark_ids_kernel[(rows,)](teacher_ids, teacher_ids.stride(0), bits, bits.stride(0), vocab, k,
                              BLOCK_K=block_k, num_warps=4)
    g = loss if grad is None else grad
    _topk_jsd_rows_kernel[(rows,)](
        student, student.stride(0), teacher_ids, teacher_ids.stride(0), teacher_logprobs,
        teacher_logprobs.stride(0), bits, bits.stride(0), g, g.stride(0), row_scale, loss, vocab, k,
        1.0 / temperature, HAS_GRAD=grad is not None, BLOCK_K=block_k, **_beta_args(beta),
        **_launch_cfg(vocab))
