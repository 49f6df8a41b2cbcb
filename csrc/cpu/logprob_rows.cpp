// Per-row token log-probabilities, entropies and their gradient on the CPU: OpenMP over rows, one
// row per thread, 8-wide vector loops.
//
// Forward, per row, with z = x / T, m = max_j z_j, d_j = z_j - m, u_j = exp(d_j), s = sum_j u_j:
//   lse = m + log s,   log p_id = d_id - log s,
//   H = -sum_j p_j log p_j = -sum_j (u_j / s)(d_j - log s) = log s - (sum_j u_j d_j) / s.
// Both terms of H are >= 0 (d_j <= 0, s >= 1); only the rounding of m (d_max can be a hair above
// 0) can push it below 0, hence the clamp. Two passes: a max pass, then one exp per entry feeding s
// and sum u d (fp32 lanes within 2048-entry blocks, double across). log p is formed as d - log s,
// not z - lse, so that lse's rounding (up to |lse| ulps) does not enter it.
//
// Gradient of sum_r g1 log p_id + g2 H: d log p_id / dz_j = [j == id] - p_j, dH / dz_j =
// -p_j (log p_j + H), and one more 1/T for the raw logits:
//   grad_j = p_j (c0 + c1 log p_j) + [j == id] g1 / T,   c0 = -(g1 + g2 H) / T,   c1 = -g2 / T,
// in one pass with log p_j = z_j - lse (one fma) and p_j = exp(log p_j): one exp, no log.
//
// Masked entries (z = -inf): exponents are clamped below at -104, where vm::exp is already 0, so
// u d and p log p are 0, not NaN; NaN logits stay NaN. grad may alias logits: every pass reads
// entry j before it writes entry j, and the id's entry is computed before the pass, stored after.
#include "logprob_rows.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "vector_math.h"

namespace sleepcore::cpu {
namespace {

using vm::f32x8;
using vm::kBlock;
using vm::kLanes;
constexpr float kNegInf = -vm::kInf;

// scale x - shift of n entries (missing lanes: -inf), in one rounding.
template <class T>
inline f32x8 shifted(const T* x, int64_t n, float scale, float shift) {
  return vm::fma(vm::load(x, n, kNegInf), vm::splat(scale), vm::splat(-shift));
}

// max(-104, e): exp is unchanged (0 below -104), 0 * e stays 0 for e = -inf, NaN stays NaN, and
// e is in vm::exp_clamped's domain (e <= 0 up to rounding: z - max or z - lse).
inline f32x8 exp_floor(f32x8 e) { return vm::max(vm::splat(-104.f), e); }

struct RowOut {
  float logp = 0, entropy = 0, lse = 0;
};

template <class T>
RowOut forward_row(const T* x, int64_t len, int64_t id, float scale) {
  f32x8 mv = vm::splat(kNegInf);
  for (int64_t j = 0; j < len; j += kLanes) mv = vm::max(mv, vm::load(x + j, len - j, kNegInf));
  const float m = vm::hmax(mv) * scale;
  double s = 0, ud = 0;
  for (int64_t b = 0; b < len; b += kBlock) {
    f32x8 s8 = {}, ud8 = {};
    const int64_t end = std::min(len, b + kBlock);
    for (int64_t j = b; j < end; j += kLanes) {
      const f32x8 d = exp_floor(shifted(x + j, end - j, scale, m));
      const f32x8 u = vm::exp_clamped(d);
      s8 += u;
      ud8 = vm::fma(u, d, ud8);
    }
    s += vm::hsum(s8);
    ud += vm::hsum(ud8);
  }
  const double log_s = std::log(s);
  return {float(shifted(x + id, 1, scale, m)[0] - log_s), float(std::max(0.0, log_s - ud / s)),
          float(m + log_s)};
}

// grad_j = p_j (c0 + c1 log p_j) + [j == id] g_id with log p_j = scale x_j - lse.
struct GradRow {
  float scale, lse, c0, c1, g_id;
};

template <class T>
void grad_row(const T* x, T* g, int64_t len, int64_t id, const GradRow& row) {
  const f32x8 c0 = vm::splat(row.c0), c1 = vm::splat(row.c1);
  const f32x8 lp_id = exp_floor(shifted(x + id, 1, row.scale, row.lse));
  const f32x8 g_id = vm::fma(vm::exp_clamped(lp_id), vm::fma(c1, lp_id, c0), vm::splat(row.g_id));
  for (int64_t j = 0; j < len; j += kLanes) {
    const f32x8 lp = exp_floor(shifted(x + j, len - j, row.scale, row.lse));
    vm::store(g + j, vm::exp_clamped(lp) * vm::fma(c1, lp, c0), len - j);
  }
  vm::store(g + id, g_id, 1);
}

template <class T>
void forward_impl(const T* logits, int64_t stride, int64_t rows, int64_t vocab, const int64_t* ids,
                  float scale, float* logp, float* entropy, float* lse, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t id = ids[r];
    const RowOut out = id < 0 ? RowOut{} : forward_row(logits + r * stride, vocab, id, scale);
    logp[r] = out.logp;
    lse[r] = out.lse;
    if (entropy) entropy[r] = out.entropy;
  }
}

template <class T>
void grad_impl(const T* logits, int64_t stride, T* grad, int64_t grad_stride, int64_t rows,
               int64_t vocab, const int64_t* ids, double temperature, const float* lse,
               const float* entropy, const float* grad_logp, const float* grad_entropy,
               int num_threads) {
  const float scale = float(1 / temperature);
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
  for (int64_t r = 0; r < rows; ++r) {
    T* g = grad + r * grad_stride;
    if (ids[r] < 0) {
      for (int64_t j = 0; j < vocab; j += kLanes) vm::store(g + j, f32x8{}, vocab - j);
      continue;
    }
    const double g1 = grad_logp[r], g2 = grad_entropy ? grad_entropy[r] : 0.0;
    const double h = grad_entropy ? entropy[r] : 0.0;
    const GradRow row{scale, lse[r], float(-(g1 + g2 * h) / temperature), float(-g2 / temperature),
                      float(g1 / temperature)};
    grad_row(logits + r * stride, g, vocab, ids[r], row);
  }
}

// Throws on the first id >= vocab (negative ids mark ignored rows).
void check_ids(const int64_t* ids, int64_t rows, int64_t vocab) {
  const int64_t* bad = std::find_if(ids, ids + rows, [&](int64_t id) { return id >= vocab; });
  if (bad == ids + rows) return;
  throw std::invalid_argument("token_ids: id " + std::to_string(*bad) + " (row " +
                              std::to_string(bad - ids) + ") out of range [0, " +
                              std::to_string(vocab) + ")");
}

}  // namespace

void logprob_rows(const void* logits, int64_t logits_stride, DType dtype, int64_t rows,
                  int64_t vocab, const int64_t* token_ids, double temperature, float* logp,
                  float* entropy, float* lse, int num_threads) {
  check_ids(token_ids, rows, vocab);
  vm::dispatch_dtype(dtype, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    forward_impl(static_cast<const T*>(logits), logits_stride, rows, vocab, token_ids,
                 float(1 / temperature), logp, entropy, lse, std::max(num_threads, 1));
  });
}

void logprob_grad_rows(const void* logits, int64_t logits_stride, void* grad, int64_t grad_stride,
                       DType dtype, int64_t rows, int64_t vocab, const int64_t* token_ids,
                       double temperature, const float* lse, const float* entropy,
                       const float* grad_logp, const float* grad_entropy, int num_threads) {
  check_ids(token_ids, rows, vocab);
  if (grad_entropy && !entropy) {
    throw std::invalid_argument("logprob_grad_rows: grad_entropy needs the forward's entropy");
  }
  vm::dispatch_dtype(dtype, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    grad_impl(static_cast<const T*>(logits), logits_stride, static_cast<T*>(grad), grad_stride,
              rows, vocab, token_ids, temperature, lse, entropy, grad_logp, grad_entropy,
              std::max(num_threads, 1));
  });
}

}  // namespace sleepcore::cpu
