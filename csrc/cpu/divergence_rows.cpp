// Per-row generalized JSD on the CPU: OpenMP over rows, one row per thread, 8-wide vector loops.
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
// Dense passes per row: (1) per side, a max pass, then u_j = exp(z_j - max) into a per-thread
// scratch row and its sum: the row's only exps; (2) loss and S from z (for log p, log q) and u
// (p = u / sum): one log per entry for 0 < beta < 1, none otherwise; with a gradient, beta == 0
// writes it here, otherwise a_j goes over the teacher's u; (3) g = a - p S from the scratch.
// grad may alias student: (2) reads student entry j before writing grad entry j, (3) reads scratch.
//
// Top-k: the bins are the k teacher ids plus a rest bin R (every other id). Student:
// log P_i = z_i - lse(z), log P_R = lse_{j in R}(z_j) - lse(z), the rest sum taken over R itself
// (per-thread byte flags mark the ids; no 1 - sum cancellation). Teacher: log Q_i as given,
// Q_R = max(0, 1 - sum_i Q_i) (in double). Rest log-probs are clamped below at kRestLogFloor.
// With a_b over the bins and S = sum_b a_b (a_R left out of S and of the chain rule when the
// student's clamp is active):
//   dL/dz_i = a_i - pi_i S  (ids),  dL/dz_j = a_R exp(z_j - lse_R) - pi_j S = pi_j (a_R / P_R - S)
// for j in R, where pi = softmax(z) and P_R = exp(lse_R - lse) when unclamped. So one pass over u
// writes pi_j (a_R / P_R - S) everywhere, then the k ids are overwritten.
//
// Accuracy: log p is formed as (z - max) - log(sum), not z - lse (which would round lse, up to
// |z| ulps, into every entry); sums are fp32 lanes within 2048-entry blocks, double across.
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
using vm::kBlock;
using vm::kLanes;
constexpr float kNegInf = -vm::kInf;

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

// scale x - max of 8 entries, in one rounding.
template <class T>
inline f32x8 shifted(const T* x, int64_t n, float scale, float max) {
  return vm::fma(vm::load(x, n, kNegInf), vm::splat(scale), vm::splat(-max));
}

// Softmax of z = scale x over [0, len). Stores u_j = exp(z_j - max) and returns what turns u and
// z into p_j = u_j inv_sum and log p_j = (z_j - max) - log_sum (max kept apart so that lse is not
// rounded into every entry). kMasked: also log_rest = log(share of the entries whose skip byte is
// 0), -inf when there are none.
struct Softmax {
  float max, log_sum, inv_sum;
  double log_rest;
};
template <bool kMasked, class T>
Softmax row_softmax(const T* x, const uint8_t* skip, float* u, int64_t len, float scale) {
  f32x8 mv = vm::splat(kNegInf);
  for (int64_t j = 0; j < len; j += kLanes) mv = vm::max(mv, vm::load(x + j, len - j, kNegInf));
  const float m = vm::hmax(mv) * scale;
  const Sums sums = row_sums(len, [&](int64_t j, int64_t n, f32x8& all, f32x8& rest) {
    const f32x8 e = vm::exp(shifted(x + j, n, scale, m));
    vm::store(u + j, e, n);
    all += e;
    if constexpr (kMasked) rest += vm::load_flags(skip + j, n) ? f32x8{} : e;
  });
  return {m, float(std::log(sums.first)), float(1 / sums.first),
          std::log(sums.second) - std::log(sums.first)};
}

template <class T>
inline f32x8 log_softmax(const T* x, int64_t n, float scale, const Softmax& sm) {
  return shifted(x, n, scale, sm.max) - sm.log_sum;
}

// The loss term and a = dL/d(log p) of each lane, given log p, log q, p and q. Terms weighted by
// a probability that is exactly 0 are 0 (xlogy); a NaN weight stays NaN.
struct Terms {
  f32x8 loss, a;
};
template <Mode M>
inline Terms terms(f32x8 lp, f32x8 lq, f32x8 p, f32x8 q, float beta) {
  const f32x8 zero = {};
  if constexpr (M == Mode::kForwardKl) {
    return {q == 0.f ? zero : q * (lq - lp), -q};
  } else if constexpr (M == Mode::kReverseKl) {
    const f32x8 kl = p == 0.f ? zero : p * (lp - lq);
    return {kl, kl + p};
  } else {
    const f32x8 m = vm::fma(vm::splat(beta), q, (1.f - beta) * p);
    const f32x8 lm = vm::log(vm::max(vm::splat(FLT_MIN), m));  // m == 0: both terms are 0
    const f32x8 a = (1.f - beta) * (p == 0.f ? zero : p * (lp - lm));
    return {vm::fma(vm::splat(beta), q == 0.f ? zero : q * (lq - lm), a), a};
  }
}

template <class T>
void fill_zero(T* g, int64_t len) {
  for (int64_t j = 0; j < len; j += kLanes) vm::store(g + j, f32x8{}, len - j);
}

// Dense rows --------------------------------------------------------------------------------------

struct DenseRow {
  float inv_t, beta, gscale;  // gscale = row_scale / T
  Softmax s, t;
};

// Loss pass: returns (sum of loss terms, S = sum of a). With kGrad it also stores the gradient
// gscale (p - q) for beta == 0 (S = -1), and otherwise a, over the teacher's u.
template <Mode M, bool kGrad, class T>
Sums dense_loss(const T* s, const T* t, const float* us, float* ut_a, T* g, int64_t len,
                const DenseRow& row) {
  return row_sums(len, [&](int64_t j, int64_t n, f32x8& loss, f32x8& a_sum) {
    const f32x8 lp = log_softmax(s + j, n, row.inv_t, row.s);
    const f32x8 lq = log_softmax(t + j, n, row.inv_t, row.t);
    const f32x8 p = vm::load(us + j, n, 0.f) * row.s.inv_sum;
    const f32x8 q = vm::load(ut_a + j, n, 0.f) * row.t.inv_sum;
    const Terms e = terms<M>(lp, lq, p, q, row.beta);
    loss += e.loss;
    a_sum += e.a;
    if constexpr (kGrad && M == Mode::kForwardKl) vm::store(g + j, (p - q) * row.gscale, n);
    if constexpr (kGrad && M != Mode::kForwardKl) vm::store(ut_a + j, e.a, n);
  });
}

// Loss of one row; us and ut are vocab-sized scratch. g may alias s: each pass reads entry j of
// s before it writes entry j of g.
template <Mode M, class T>
float dense_row(const T* s, const T* t, T* g, int64_t len, DenseRow row, float* us, float* ut) {
  row.s = row_softmax<false>(s, nullptr, us, len, row.inv_t);
  row.t = row_softmax<false>(t, nullptr, ut, len, row.inv_t);
  if (!g) return float(dense_loss<M, false>(s, t, us, ut, g, len, row).first);
  const Sums sums = dense_loss<M, true>(s, t, us, ut, g, len, row);
  if constexpr (M != Mode::kForwardKl) {  // g = gscale (a - p S)
    const f32x8 p_scale = vm::splat(-float(row.s.inv_sum * sums.second));
    for (int64_t j = 0; j < len; j += kLanes) {
      const f32x8 a = vm::load(ut + j, len - j, 0.f), u = vm::load(us + j, len - j, 0.f);
      vm::store(g + j, vm::fma(u, p_scale, a) * row.gscale, len - j);
    }
  }
  return float(sums.first);
}

template <class T, Mode M>
void jsd_impl(const T* student, int64_t s_stride, const T* teacher, int64_t t_stride, T* grad,
              int64_t g_stride, int64_t rows, int64_t vocab, const float* row_scale, float* loss,
              float beta, float inv_t, int num_threads) {
#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> scratch(2 * vocab);
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; ++r) {
      T* g = grad ? grad + r * g_stride : nullptr;
      if (row_scale[r] == 0) {
        if (g) fill_zero(g, vocab);
        loss[r] = 0;
        continue;
      }
      const DenseRow row{inv_t, beta, row_scale[r] * inv_t, {}, {}};
      loss[r] = dense_row<M>(student + r * s_stride, teacher + r * t_stride, g, vocab, row,
                             scratch.data(), scratch.data() + vocab);
    }
  }
}

// Top-k rows --------------------------------------------------------------------------------------

// Per-thread scratch: skip flags over the vocab (all 0 between rows), u of the student and four
// (k + 1)-float bin arrays: log p, log q, p, a.
struct TopkScratch {
  std::vector<uint8_t> skip;
  std::vector<float> u, bins;
  float *lp, *lq, *p, *a;
  TopkScratch(int64_t vocab, int64_t k) : skip(vocab), u(vocab), bins(4 * (k + 1)) {
    lp = bins.data(), lq = lp + k + 1, p = lq + k + 1, a = p + k + 1;
  }
};

struct TopkRow {
  const int64_t* ids;
  const float* teacher_logp;
  int64_t k;
  float inv_t, beta, gscale;
};

// Fills the bins' log p, log q and p (the rest bin last) and u; returns the student's softmax.
template <class T>
Softmax topk_bins(const T* s, int64_t vocab, const TopkRow& row, TopkScratch& w) {
  for (int64_t i = 0; i < row.k; ++i) w.skip[row.ids[i]] = 1;
  const Softmax sm = row_softmax<true>(s, w.skip.data(), w.u.data(), vocab, row.inv_t);
  for (int64_t i = 0; i < row.k; ++i) w.skip[row.ids[i]] = 0;
  for (int64_t i = 0; i < row.k; ++i) {
    w.lp[i] = log_softmax(s + row.ids[i], 1, row.inv_t, sm)[0];
    w.p[i] = w.u[row.ids[i]] * sm.inv_sum;
    w.lq[i] = row.teacher_logp[i];
  }
  const double lp_rest = std::max(sm.log_rest, kRestLogFloor);
  w.lp[row.k] = float(lp_rest);
  w.p[row.k] = float(std::exp(lp_rest));
  const double q_top = row_sums(row.k, [&](int64_t j, int64_t n, f32x8& acc, f32x8&) {
    acc += vm::exp(vm::load(row.teacher_logp + j, n, kNegInf));
  }).first;
  w.lq[row.k] = float(std::max(std::log(std::max(1 - q_top, 0.0)), kRestLogFloor));
  return sm;
}

template <Mode M, class T>
float topk_row(const T* s, T* g, int64_t vocab, const TopkRow& row, TopkScratch& w) {
  const Softmax sm = topk_bins(s, vocab, row, w);
  const int64_t k = row.k;
  const double loss = row_sums(k + 1, [&](int64_t j, int64_t n, f32x8& acc, f32x8&) {
    const f32x8 lq = vm::load(w.lq + j, n, kNegInf);
    const Terms e = terms<M>(vm::load(w.lp + j, n, kNegInf), lq, vm::load(w.p + j, n, 0.f),
                             vm::exp(lq), row.beta);
    acc += e.loss;
    vm::store(w.a + j, e.a, n);
  }).first;
  if (!g) return float(loss);
  const bool clamped = !(sm.log_rest >= kRestLogFloor);  // then a_R is out of S and the chain rule
  double a_sum = clamped ? 0.0 : w.a[k];
  for (int64_t i = 0; i < k; ++i) a_sum += w.a[i];
  // Off the ids, g_j = gscale pi_j (a_R / P_R - S) with pi_j = u_j inv_sum.
  const double rest_g = (clamped ? 0.0 : double(w.a[k]) / w.p[k]) - a_sum;
  const f32x8 rest_w = vm::splat(float(rest_g * sm.inv_sum * row.gscale));
  for (int64_t j = 0; j < vocab; j += kLanes) {
    vm::store(g + j, vm::load(w.u.data() + j, vocab - j, 0.f) * rest_w, vocab - j);
  }
  for (int64_t i = 0; i < k; ++i) {
    vm::store(g + row.ids[i], vm::splat(float((w.a[i] - w.p[i] * a_sum) * row.gscale)), 1);
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
      T* g = grad ? grad + r * g_stride : nullptr;
      if (row_scale[r] == 0) {
        if (g) fill_zero(g, vocab);
        loss[r] = 0;
        continue;
      }
      const TopkRow row{ids + r * ids_stride, teacher_logp + r * logp_stride, k, inv_t, beta,
                        row_scale[r] * inv_t};
      loss[r] = topk_row<M>(student + r * s_stride, g, vocab, row, scratch);
    }
  }
}

// Throws on the first out-of-range id (lowest row), before anything is written.
void check_ids(const int64_t* ids, int64_t stride, int64_t rows, int64_t k, int64_t vocab,
               int num_threads) {
  auto bad = [&](int64_t id) { return id < 0 || id >= vocab; };
  int64_t bad_row = rows;
#pragma omp parallel for num_threads(num_threads) reduction(min : bad_row)
  for (int64_t r = 0; r < rows; ++r) {
    if (std::any_of(ids + r * stride, ids + r * stride + k, bad)) bad_row = std::min(bad_row, r);
  }
  if (bad_row == rows) return;
  const int64_t* row = ids + bad_row * stride;
  const int64_t id = *std::find_if(row, row + k, bad);
  throw std::invalid_argument("teacher_topk_ids: id " + std::to_string(id) + " out of range [0, " +
                              std::to_string(vocab) + ")");
}

// Calls fn(T*, integral_constant<Mode>) with T the storage type of dtype.
template <class Fn>
void dispatch(DType dtype, double beta, Fn&& fn) {
  vm::dispatch_dtype(dtype, [&](auto* type) {
    if (beta == 0) return fn(type, std::integral_constant<Mode, Mode::kForwardKl>{});
    if (beta == 1) return fn(type, std::integral_constant<Mode, Mode::kReverseKl>{});
    fn(type, std::integral_constant<Mode, Mode::kMixture>{});
  });
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
