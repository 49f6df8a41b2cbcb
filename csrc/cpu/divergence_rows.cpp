// Per-row generalized JSD on the CPU: one OpenMP thread per row, 8-wide vector loops.
//
// Maths, per row, with z = logits / T, log p = z_s - lse(z_s), log q = z_t - lse(z_t):
//   beta == 0:  L = sum_j q_j (log q_j - log p_j)                     KL(teacher || student)
//   beta == 1:  L = sum_j p_j (log p_j - log q_j)                     KL(student || teacher)
//   otherwise:  m_j = (1 - beta) p_j + beta q_j,
//               L = sum_j beta q_j (log q_j - log m_j) + (1 - beta) p_j (log p_j - log m_j)
//   and a term whose weight (q_j or p_j) is exactly 0 is 0 (xlogy).
// Gradient: let a_j = dL/d(log p_j) with log p taken as free. Then
//   beta == 0: a_j = -q_j;  beta == 1: a_j = p_j (log p_j - log q_j + 1);
//   otherwise: a_j = (1 - beta) p_j (log p_j - log m_j)  (the m-derivatives of the two KLs cancel),
// and since d log p_i / d z_j = [i == j] - p_j,  dL/dz_j = a_j - p_j S  with S = sum_i a_i
// (S = -1 for beta == 0, so dL/dz = p - q). The raw-logit gradient is row_scale / T * dL/dz.
//
// Passes per row: (1) lse of both sides, per 2048-element block a max pass then a sum-of-exp pass
// that hits L1; (2) loss and S; (3) the gradient, recomputing a_j and p_j element by element, so
// grad may alias student. For beta == 0, S is known and (2) and (3) are one pass.
//
// Top-k: the bins are the k teacher ids plus a rest bin R (every other id). Student:
// log P_i = z_i - lse(z), log P_R = lse_{j in R}(z_j) - lse(z), with the rest sum taken over R
// directly (no 1 - sum cancellation). Teacher: log Q_i as given, Q_R = max(0, 1 - sum_i Q_i).
// Rest log-probs are clamped below at kRestLogFloor. With a_b, S = sum_b a_b over the bins (a_R
// left out of S and of the chain rule when the student's clamp is active):
//   dL/dz_i = a_i - pi_i S  (ids),    dL/dz_j = a_R exp(z_j - lse_R) - pi_j S = pi_j (a_R / P_R - S)
// for j in R, where pi = softmax(z) and P_R = exp(lse_R - lse) when unclamped. So one exp pass
// writes pi_j (a_R / P_R - S) everywhere, then the k ids are overwritten.
//
// Sums: fp32 lanes within a 2048-element block, double across blocks and for row totals.
#include "divergence_rows.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "vector_math.h"

namespace sleepcore::cpu {
namespace {

using vm::f32x8;
using vm::kLanes;

constexpr int64_t kBlock = 2048;

enum class Mode { kForwardKl, kReverseKl, kMixture };  // beta == 0, beta == 1, otherwise

struct Sums {
  double first = 0, second = 0;
};

// Calls body(j, n, acc1, acc2) for j = 0, 8, 16, ... < len (n = len - j elements remain) and
// returns the totals of the two fp32 lane accumulators, flushed to double every kBlock elements.
template <class Body>
inline Sums row_sums(int64_t len, Body&& body) {
  Sums total;
  for (int64_t b = 0; b < len; b += kBlock) {
    f32x8 acc1 = {}, acc2 = {};
    const int64_t end = std::min(len, b + kBlock);
    for (int64_t j = b; j < end; j += kLanes) body(j, end - j, acc1, acc2);
    total.first += vm::hsum(acc1);
    total.second += vm::hsum(acc2);
  }
  return total;
}

// lse of z = scale * x over [0, len) as max + log(sum of exp(z - max)), the sum also taken
// (kMasked) over only the entries whose skip byte is 0. Keeping max apart lets callers form
// log p = (z - max) - log(sum) as torch does, without rounding lse (~|z| ulps) into every entry.
// scale x - max for 8 entries (one rounding).
template <class T>
inline f32x8 shifted(const T* x, int64_t n, float scale, float max) {
  return vm::fma(vm::load(x, n), vm::splat(scale), vm::splat(-max));
}

struct Lse {
  float max;
  double log_all, log_rest;
};
template <bool kMasked, class T>
Lse row_lse(const T* x, const uint8_t* skip, int64_t len, float scale) {
  float m = -vm::kInf;
  double all = 0, rest = 0;  // sums of exp(z - m)
  for (int64_t b = 0; b < len; b += kBlock) {
    const int64_t n = std::min(kBlock, len - b);
    f32x8 bm = vm::splat(-vm::kInf);
    for (int64_t j = 0; j < n; j += kLanes) bm = vm::max(bm, vm::load(x + b + j, n - j));
    const float shift = vm::hmax(bm) * scale;
    if (shift == -vm::kInf) continue;
    const Sums s = row_sums(n, [&](int64_t j, int64_t left, f32x8& acc_all, f32x8& acc_rest) {
      const f32x8 e = vm::exp(shifted(x + b + j, left, scale, shift));
      acc_all += e;
      if constexpr (kMasked) acc_rest += vm::load_flags(skip + b + j, left) ? f32x8{} : e;
    });
    const float new_m = std::max(m, shift);
    const double old_w = std::exp(double(m) - new_m), new_w = std::exp(double(shift) - new_m);
    all = all * old_w + s.first * new_w;
    rest = rest * old_w + s.second * new_w;
    m = new_m;
  }
  return {m, std::log(all), std::log(rest)};
}

// log-probs of 8 entries: (scale x - max) - log_sum.
template <class T>
inline f32x8 log_softmax(const T* x, int64_t n, float scale, float max, float log_sum) {
  return shifted(x, n, scale, max) - log_sum;
}

// The loss term, a = dL/d(log p) and p of each lane, given log p and log q.
struct Terms {
  f32x8 loss, a, p;
};
template <Mode M>
inline Terms terms(f32x8 lp, f32x8 lq, float beta) {
  const f32x8 zero = {};
  const f32x8 p = vm::exp(lp);
  if constexpr (M == Mode::kForwardKl) {
    const f32x8 q = vm::exp(lq);
    return {q > 0.f ? q * (lq - lp) : zero, -q, p};
  } else if constexpr (M == Mode::kReverseKl) {
    const f32x8 kl = p > 0.f ? p * (lp - lq) : zero;
    return {kl, kl + p, p};
  } else {
    const f32x8 q = vm::exp(lq);
    const f32x8 lm = vm::log(vm::max(vm::fma(vm::splat(beta), q, (1.f - beta) * p), vm::splat(FLT_MIN)));
    const f32x8 a = (1.f - beta) * (p > 0.f ? p * (lp - lm) : zero);
    return {vm::fma(vm::splat(beta), q > 0.f ? q * (lq - lm) : zero, a), a, p};
  }
}

template <class T>
void fill_zero(T* g, int64_t len) {
  for (int64_t j = 0; j < len; j += kLanes) vm::store(g + j, f32x8{}, len - j);
}

// Dense rows --------------------------------------------------------------------------------------

struct DenseRow {
  float inv_t, max_s, log_sum_s, max_t, log_sum_t, beta;
};

// Returns (sum of loss terms, S = sum of a); with kWrite also g = gscale (a - p s).
template <Mode M, bool kWrite, class T>
Sums dense_sweep(const T* s, const T* t, T* g, int64_t len, const DenseRow& row, float s_sum,
                 float gscale) {
  return row_sums(len, [&](int64_t j, int64_t n, f32x8& loss, f32x8& a_sum) {
    const f32x8 lp = log_softmax(s + j, n, row.inv_t, row.max_s, row.log_sum_s);
    const f32x8 lq = log_softmax(t + j, n, row.inv_t, row.max_t, row.log_sum_t);
    const Terms e = terms<M>(lp, lq, row.beta);
    loss += e.loss;
    a_sum += e.a;
    if constexpr (kWrite) vm::store(g + j, (e.a - e.p * s_sum) * gscale, n);
  });
}

template <Mode M, class T>
float dense_row(const T* s, const T* t, T* g, int64_t len, float inv_t, float beta, float scale) {
  if (scale == 0) {
    if (g) fill_zero(g, len);
    return 0;
  }
  const Lse ls = row_lse<false>(s, nullptr, len, inv_t), lt = row_lse<false>(t, nullptr, len, inv_t);
  const DenseRow row{inv_t, ls.max, float(ls.log_all), lt.max, float(lt.log_all), beta};
  const float gscale = scale * inv_t;
  if (g && M == Mode::kForwardKl) return dense_sweep<M, true>(s, t, g, len, row, -1.f, gscale).first;
  const Sums sums = dense_sweep<M, false>(s, t, g, len, row, 0.f, 0.f);
  if (g) dense_sweep<M, true>(s, t, g, len, row, float(sums.second), gscale);
  return float(sums.first);
}

template <class T, Mode M>
void jsd_impl(const T* student, int64_t s_stride, const T* teacher, int64_t t_stride, T* grad,
              int64_t g_stride, int64_t rows, int64_t vocab, const float* row_scale, float* loss,
              float beta, float inv_t, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < rows; ++r) {
    loss[r] = dense_row<M>(student + r * s_stride, teacher + r * t_stride,
                           grad ? grad + r * g_stride : nullptr, vocab, inv_t, beta, row_scale[r]);
  }
}

// Top-k rows --------------------------------------------------------------------------------------

// Per-thread scratch: skip flags over the vocab (all 0 between rows) and four (k + 1)-float bin
// arrays: student log-probs, teacher log-probs, a, p.
struct TopkScratch {
  std::vector<uint8_t> skip;
  std::vector<float> bins;
  float *lp, *lq, *a, *p;
  TopkScratch(int64_t vocab, int64_t k) : skip(vocab), bins(4 * (k + 1)) {
    lp = bins.data(), lq = lp + k + 1, a = lq + k + 1, p = a + k + 1;
  }
};

struct TopkRow {
  const int64_t* ids;
  const float* teacher_logp;
  int64_t k;
  float inv_t, beta, scale;
};

// Fills the k + 1 bins' log-probs; returns lse(z) and whether the student's rest bin is clamped.
template <class T>
std::pair<Lse, bool> topk_bins(const T* s, int64_t vocab, const TopkRow& row, TopkScratch& w) {
  for (int64_t i = 0; i < row.k; ++i) w.skip[row.ids[i]] = 1;
  const Lse lse = row_lse<true>(s, w.skip.data(), vocab, row.inv_t);
  for (int64_t i = 0; i < row.k; ++i) w.skip[row.ids[i]] = 0;
  for (int64_t i = 0; i < row.k; ++i) {
    w.lp[i] = log_softmax(s + row.ids[i], 1, row.inv_t, lse.max, float(lse.log_all))[0];
    w.lq[i] = row.teacher_logp[i];
  }
  const double student_rest = lse.log_rest - lse.log_all;  // -inf when every id is a bin
  const bool clamped = !(student_rest >= kRestLogFloor);
  w.lp[row.k] = float(clamped ? kRestLogFloor : student_rest);
  const double teacher_mass = row_sums(row.k, [&](int64_t j, int64_t n, f32x8& acc, f32x8&) {
    acc += vm::exp(vm::load(row.teacher_logp + j, n));
  }).first;
  w.lq[row.k] = float(std::max(std::log(std::max(1 - teacher_mass, 0.0)), kRestLogFloor));
  return {lse, clamped};
}

template <Mode M, class T>
float topk_row(const T* s, T* g, int64_t vocab, const TopkRow& row, TopkScratch& w) {
  if (row.scale == 0) {
    if (g) fill_zero(g, vocab);
    return 0;
  }
  const auto [lse, clamped] = topk_bins(s, vocab, row, w);
  const int64_t nb = row.k + 1;
  const double loss = row_sums(nb, [&](int64_t j, int64_t n, f32x8& acc, f32x8&) {
    const Terms e = terms<M>(vm::load(w.lp + j, n), vm::load(w.lq + j, n), row.beta);
    acc += e.loss;
    vm::store(w.a + j, e.a, n);
    vm::store(w.p + j, e.p, n);
  }).first;
  if (!g) return float(loss);
  double a_sum = clamped ? 0.0 : w.a[row.k];
  for (int64_t i = 0; i < row.k; ++i) a_sum += w.a[i];
  const float s_sum = float(a_sum), gscale = row.scale * row.inv_t;
  const float rest_w = ((clamped ? 0.f : w.a[row.k] / w.p[row.k]) - s_sum) * gscale;
  const float log_sum = float(lse.log_all);
  for (int64_t j = 0; j < vocab; j += kLanes) {
    const f32x8 pi = vm::exp(log_softmax(s + j, vocab - j, row.inv_t, lse.max, log_sum));
    vm::store(g + j, pi * rest_w, vocab - j);
  }
  for (int64_t i = 0; i < row.k; ++i) {
    vm::store(g + row.ids[i], vm::splat((w.a[i] - w.p[i] * s_sum) * gscale), 1);
  }
  return float(loss);
}

template <class T, Mode M>
void topk_impl(const T* student, int64_t s_stride, const int64_t* ids, int64_t ids_stride,
               const float* teacher_logp, int64_t logp_stride, T* grad, int64_t g_stride,
               int64_t rows, int64_t vocab, int64_t k, const float* row_scale, float* loss,
               float beta, float inv_t, int num_threads) {
#pragma omp parallel num_threads(num_threads)
  {
    TopkScratch scratch(vocab, k);
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; ++r) {
      const TopkRow row{ids + r * ids_stride, teacher_logp + r * logp_stride, k, inv_t, beta,
                        row_scale[r]};
      loss[r] = topk_row<M>(student + r * s_stride, grad ? grad + r * g_stride : nullptr, vocab,
                            row, scratch);
    }
  }
}

void check_ids(const int64_t* ids, int64_t stride, int64_t rows, int64_t k, int64_t vocab,
               int num_threads) {
  auto bad = [&](int64_t id) { return id < 0 || id >= vocab; };
  int64_t first_bad_row = rows;
#pragma omp parallel for num_threads(num_threads) reduction(min : first_bad_row)
  for (int64_t r = 0; r < rows; ++r) {
    if (std::any_of(ids + r * stride, ids + r * stride + k, bad)) first_bad_row = std::min(first_bad_row, r);
  }
  if (first_bad_row == rows) return;
  const int64_t* row = ids + first_bad_row * stride;
  throw std::invalid_argument("teacher_topk_ids: id " + std::to_string(*std::find_if(row, row + k, bad)) +
                              " out of range [0, " + std::to_string(vocab) + ")");
}

// Calls fn(T*, integral_constant<Mode>) with T the storage type of dtype.
template <class Fn>
void dispatch(DType dtype, double beta, Fn&& fn) {
  auto by_mode = [&](auto* type) {
    if (beta == 0) return fn(type, std::integral_constant<Mode, Mode::kForwardKl>{});
    if (beta == 1) return fn(type, std::integral_constant<Mode, Mode::kReverseKl>{});
    fn(type, std::integral_constant<Mode, Mode::kMixture>{});
  };
  switch (dtype) {
    case DType::Float32: return by_mode(static_cast<float*>(nullptr));
    case DType::BFloat16: return by_mode(static_cast<vm::BFloat16*>(nullptr));
    case DType::Float16: return by_mode(static_cast<_Float16*>(nullptr));
  }
  throw std::invalid_argument("divergence_rows: unsupported dtype");
}

}  // namespace

void jsd_rows(const void* student, int64_t student_stride, const void* teacher,
              int64_t teacher_stride, void* grad, int64_t grad_stride, DType dtype, int64_t rows,
              int64_t vocab, const float* row_scale, float* loss, double beta, double temperature,
              int num_threads) {
  dispatch(dtype, beta, [&](auto* type, auto mode) {
    using T = std::remove_pointer_t<decltype(type)>;
    jsd_impl<T, decltype(mode)::value>(
        static_cast<const T*>(student), student_stride, static_cast<const T*>(teacher),
        teacher_stride, static_cast<T*>(grad), grad_stride, rows, vocab, row_scale, loss,
        float(beta), float(1 / temperature), std::max(num_threads, 1));
  });
}

void topk_jsd_rows(const void* student, int64_t student_stride, const int64_t* teacher_ids,
                   int64_t ids_stride, const float* teacher_logprobs, int64_t logprobs_stride,
                   void* grad, int64_t grad_stride, DType dtype, int64_t rows, int64_t vocab,
                   int64_t k, const float* row_scale, float* loss, double beta,
                   double temperature, int num_threads) {
  num_threads = std::max(num_threads, 1);
  check_ids(teacher_ids, ids_stride, rows, k, vocab, num_threads);
  dispatch(dtype, beta, [&](auto* type, auto mode) {
    using T = std::remove_pointer_t<decltype(type)>;
    topk_impl<T, decltype(mode)::value>(
        static_cast<const T*>(student), student_stride, teacher_ids, ids_stride, teacher_logprobs,
        logprobs_stride, static_cast<T*>(grad), grad_stride, rows, vocab, k, row_scale, loss,
        float(beta), float(1 / temperature), num_threads);
  });
}

}  // namespace sleepcore::cpu
