// Token sampling on the CPU: OpenMP over rows, one row per thread, per-thread scratch rows.
//
// Per row, with x the raw logits, T > 0, z = x / T, d_j = z_j - max z (<= 0), p_j = e^{d_j}
// (unnormalised probabilities, max p = 1):
// * top-k: keep d_j >= t_k, t_k the k-th largest d (std::nth_element on a scratch copy); ties
//   at the boundary are all kept.
// * top-p, on the top-k set: the shortest prefix of that set in decreasing p whose mass reaches
//   top_p * (its total mass): a weighted selection, halving an index range with nth_element and
//   summing the upper half (O(V) expected, no sort); keep p_j >= t_p, the prefix's smallest p.
//   Only p_j >= (1 - top_p) * mass / V can be in the prefix (the rest holds less than
//   (1 - top_p) * mass). A histogram of their mass over float-bit buckets of p finds the one
//   bucket where the prefix ends; the exact selection runs on that bucket's values only.
// * min-p: keep p_j >= min_p * max p.
// * The allowed set A is the intersection; sample from p restricted to A with Gumbel-max:
//   token = argmax_{j in A} d_j + G_j, G_j = -log(-log U_j), which draws j with probability
//   p_j / sum_A p. U_j is counter based: a hash of (seed, step, j) (murmur3's fmix32 in two
//   rounds, keyed by 64 bits mixed from seed and step), so a row's draw depends on its (seed,
//   step) only. U = (2u + 1) 2^-24 with u the top 23 hash bits: exact in fp32 and inside (0, 1),
//   so both logs are finite.
// * truncated log-prob = d_token - log sum_A p_j (double sum). Greedy rows (T = 0): the first
//   argmax of x, truncated log-prob 0.
// The full-vocabulary log-prob is not computed here: the ops layer takes it from the trainer's
// row kernel (logprob_rows), so both agree bitwise.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "vector_math.h"

namespace sleepcore::cpu {
namespace {

using vm::f32x8;
using vm::i32x8;
using vm::kLanes;
using vm::u32x8;
constexpr float kNegInf = -vm::kInf;

// murmur3's 32-bit finaliser, for uint32_t or u32x8.
template <class U>
inline U fmix(U h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

struct RowKey {
  uint32_t k0, k1;
};

// Two 32-bit chains over the words of (seed, step); kernels/sampling.py computes the same.
RowKey row_key(int64_t seed, int64_t step) {
  const uint64_t s = static_cast<uint64_t>(seed), t = static_cast<uint64_t>(step);
  const uint32_t words[4] = {uint32_t(s), uint32_t(s >> 32), uint32_t(t), uint32_t(t >> 32)};
  uint32_t a = 0x243f6a88u, b = 0x85a308d3u;
  for (uint32_t w : words) {
    a = fmix(a ^ w) + 0x9e3779b9u;
    b = fmix(b + w) ^ 0x7f4a7c15u;
  }
  return {a, b};
}

// U_j for the 8 columns j0 .. j0 + 7.
inline f32x8 uniforms(RowKey key, int64_t j0) {
  const u32x8 j = uint32_t(j0) + u32x8{0, 1, 2, 3, 4, 5, 6, 7};
  const u32x8 bits = fmix(fmix(j ^ key.k0) + key.k1);
  const f32x8 u = __builtin_convertvector((i32x8)(bits >> 9), f32x8);
  return vm::fma(u, vm::splat(0x1p-23f), vm::splat(0x1p-24f));  // (2u + 1) 2^-24: exact, < 1
}

struct RowStats {
  float max;
  bool bad;  // NaN or +inf, or no finite entry
};

template <class T>
RowStats scan_row(const T* x, int64_t len) {
  f32x8 mv = vm::splat(kNegInf);
  i32x8 bad = {};
  for (int64_t j = 0; j < len; j += kLanes) {
    const f32x8 v = vm::load(x + j, len - j, kNegInf);
    bad |= (v != v) | (v == vm::kInf);
    mv = vm::max(mv, v);
  }
  bool any_bad = false;
  for (int i = 0; i < kLanes; ++i) any_bad |= bad[i] != 0;
  const float m = vm::hmax(mv);
  return {m, any_bad || m == kNegInf};
}

template <class T>
int64_t first_index_of(const T* x, int64_t len, float value) {
  for (int64_t j = 0; j < len; j += kLanes) {
    const i32x8 hit = vm::load(x + j, len - j, kNegInf) == value;
    for (int i = 0; i < kLanes; ++i)
      if (hit[i]) return j + i;
  }
  return 0;
}

// The smallest value of the shortest prefix of c[0, n) in decreasing order whose sum reaches
// `target` (reorders c; n >= 1). Invariant: c[0, lo) are the lo largest, with mass acc < target,
// and the prefix's last index is in [lo, hi).
float top_p_threshold(float* c, int64_t n, double target) {
  int64_t lo = 0, hi = n;
  double acc = 0;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo - 1) / 2;  // <= hi - 2: both branches shrink [lo, hi)
    std::nth_element(c + lo, c + mid, c + hi, std::greater<float>());
    double mass = acc;
    for (int64_t i = lo; i <= mid; ++i) mass += c[i];
    if (mass >= target) {
      hi = mid + 1;
    } else {
      acc = mass;
      lo = mid + 1;
    }
  }
  return c[lo];  // when rounding leaves the total a hair below target: the smallest value, c[n - 1]
}

// Buckets of p by its float bits >> kBucketShift (exponent and 4 mantissa bits): for p > 0 the
// bits are monotone in p. A top-p histogram spans the buckets from the floor's up to p = 1.
constexpr int kBucketShift = 19;
constexpr int kSubHistograms = 4;  // interleaved, so that equal consecutive buckets do not chain adds

inline int bucket_of(float p) {
  uint32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  return static_cast<int>(bits >> kBucketShift);
}

struct Scratch {
  std::vector<float> d, p, c;
  std::vector<double> bucket_mass;
  explicit Scratch(int64_t vocab) : d(vocab), p(vocab), c(vocab) {}
};

// sum of p_j over d_j >= dmin: fp32 vector sums per kBlock, added up in double.
double allowed_mass(const Scratch& s, int64_t len, float dmin) {
  double mass = 0;
  for (int64_t b = 0; b < len; b += vm::kBlock) {
    const int64_t end = std::min(len, b + vm::kBlock);
    f32x8 mass8 = {};
    for (int64_t j = b; j < end; j += kLanes) {
      const f32x8 d = vm::load(s.d.data() + j, end - j, kNegInf);
      mass8 += (d >= dmin) ? vm::load(s.p.data() + j, end - j, 0.f) : f32x8{};
    }
    mass += vm::hsum(mass8);
  }
  return mass;
}

// top_p_threshold over the allowed p_j >= floor (d_j >= dmin), without touching most of them
// twice: a histogram of their mass by bucket finds the bucket where the decreasing-order prefix
// reaches `target`; only that bucket's values go through the exact selection.
float bucketed_top_p_threshold(Scratch& s, int64_t len, float dmin, float floor, double target) {
  const int first = bucket_of(floor), buckets = bucket_of(1.f) - first + 1;
  s.bucket_mass.assign(kSubHistograms * buckets, 0.0);
  // 8-wide compares and blends, then lane-wise adds without branches (about half the tokens
  // pass, unpredictably): masked-out lanes add 0 to bucket 0
  struct Lanes {
    f32x8 p, value;
    i32x8 bucket, allowed;
  };
  auto lanes = [&](int64_t j) {
    const f32x8 d = vm::load(s.d.data() + j, len - j, kNegInf), p = vm::load(s.p.data() + j, len - j, 0.f);
    const i32x8 allowed = (d >= dmin) & (p >= floor);
    return Lanes{p, allowed ? p : f32x8{}, allowed ? (i32x8)((u32x8)p >> kBucketShift) - first : i32x8{}, allowed};
  };
  for (int64_t j = 0; j < len; j += kLanes) {
    const Lanes x = lanes(j);
    for (int u = 0; u < kLanes; ++u) s.bucket_mass[(u % kSubHistograms) * buckets + x.bucket[u]] += x.value[u];
  }
  double above = 0;  // mass of the buckets above `b`
  int b = buckets - 1;
  auto mass_of = [&](int bucket) {
    double m = 0;
    for (int h = 0; h < kSubHistograms; ++h) m += s.bucket_mass[h * buckets + bucket];
    return m;
  };
  while (b > 0 && above + mass_of(b) < target) above += mass_of(b--);
  int64_t n = 0;
  for (int64_t j = 0; j < len; j += kLanes) {
    const Lanes x = lanes(j);
    const i32x8 keep = x.allowed & (x.bucket == b);
    for (int u = 0; u < kLanes; ++u) {
      s.c[n] = x.p[u];
      n -= keep[u];  // -1 where kept
    }
  }
  return n > 0 ? top_p_threshold(s.c.data(), n, target - above) : floor;
}

struct RowParams {
  double temperature;
  float top_p, min_p;
  int64_t top_k;
  RowKey key;
};

struct Draw {
  int64_t token;
  float truncated_logp;
};

// d = z - max z and p = e^d into the scratch rows; returns max p.
template <class T>
float fill_logits(const T* x, int64_t len, float scale, float zmax, Scratch& s) {
  f32x8 pmax = {};
  for (int64_t j = 0; j < len; j += kLanes) {
    const f32x8 z = vm::load(x + j, len - j, kNegInf) * scale;
    const f32x8 d = vm::min(z - zmax, f32x8{});  // <= 0 even if the compiler fuses it into an fma
    const f32x8 p = vm::exp(d);
    vm::store(s.d.data() + j, d, len - j);
    vm::store(s.p.data() + j, p, len - j);
    pmax = vm::max(pmax, p);
  }
  return vm::hmax(pmax);
}

// Gumbel-max over the allowed set {d >= dmin and p >= pmin}.
Draw gumbel_max(const Scratch& s, int64_t len, float dmin, float pmin, RowKey key) {
  f32x8 best = vm::splat(kNegInf);
  i32x8 best_j = {};
  double mass = 0;
  for (int64_t b = 0; b < len; b += vm::kBlock) {
    const int64_t end = std::min(len, b + vm::kBlock);
    f32x8 mass8 = {};
    for (int64_t j = b; j < end; j += kLanes) {
      const f32x8 d = vm::load(s.d.data() + j, end - j, kNegInf);
      const f32x8 p = vm::load(s.p.data() + j, end - j, 0.f);
      const i32x8 allowed = (d >= dmin) & (p >= pmin) & (d > kNegInf);
      bool any = false;
      for (int i = 0; i < kLanes; ++i) any |= allowed[i] != 0;
      if (!any) continue;  // top-k/top-p/min-p leave most lanes out: skip their two logs
      const f32x8 gumbel = -vm::log(-vm::log(uniforms(key, j)));
      const f32x8 score = allowed ? d + gumbel : vm::splat(kNegInf);
      const i32x8 better = score > best;  // strict: the first column wins a tie within a lane
      best = better ? score : best;
      best_j = better ? int32_t(j) + i32x8{0, 1, 2, 3, 4, 5, 6, 7} : best_j;
      mass8 += allowed ? p : f32x8{};
    }
    mass += vm::hsum(mass8);
  }
  int lane = 0;
  for (int i = 1; i < kLanes; ++i)
    if (best[i] > best[lane] || (best[i] == best[lane] && best_j[i] < best_j[lane])) lane = i;
  const int64_t token = best_j[lane];
  return {token, float(s.d[token] - std::log(mass))};
}

template <class T>
Draw sample_row(const T* x, int64_t len, float xmax, const RowParams& row, Scratch& s) {
  if (row.temperature == 0) return {first_index_of(x, len, xmax), 0.f};
  const float scale = float(1 / row.temperature);  // as in logprob_rows
  const float pmax = fill_logits(x, len, scale, xmax * scale, s);
  float dmin = kNegInf, pmin = row.min_p * pmax;
  if (row.top_k > 0 && row.top_k < len) {
    std::copy(s.d.begin(), s.d.begin() + len, s.c.begin());
    std::nth_element(s.c.begin(), s.c.begin() + (row.top_k - 1), s.c.begin() + len, std::greater<float>());
    dmin = s.c[row.top_k - 1];
  }
  if (row.top_p < 1.f) {
    const double total = allowed_mass(s, len, dmin);
    // Candidates: p >= floor = (1 - top_p) total / len. The tokens below it hold less than
    // (1 - top_p) total, so those above hold at least top_p total: they contain the prefix.
    const float floor = float(0.999 * (1.0 - double(row.top_p)) * total / double(len));  // 0.999: rounding margin
    pmin = std::max(pmin, bucketed_top_p_threshold(s, len, dmin, floor, double(row.top_p) * total));
  }
  return gumbel_max(s, len, dmin, pmin, row.key);
}

template <class T>
int64_t sample_impl(const T* logits, int64_t stride, int64_t rows, int64_t vocab, const SamplingParams& prm,
                    int64_t* token_ids, float* truncated_logp, int num_threads) {
  int64_t first_bad = rows;
#pragma omp parallel num_threads(num_threads)
  {
    Scratch scratch(vocab);
#pragma omp for schedule(dynamic, 1) reduction(min : first_bad)
    for (int64_t r = 0; r < rows; ++r) {
      const T* x = logits + r * stride;
      const RowStats stats = scan_row(x, vocab);
      if (stats.bad) {
        first_bad = std::min(first_bad, r);
        token_ids[r] = 0;
        truncated_logp[r] = 0.f;
        continue;
      }
      const RowParams row{prm.temperature[r], prm.top_p[r], prm.min_p[r], prm.top_k[r],
                          row_key(prm.seeds[r], prm.steps[r])};
      const Draw draw = sample_row(x, vocab, stats.max, row, scratch);
      token_ids[r] = draw.token;
      truncated_logp[r] = draw.truncated_logp;
    }
  }
  return first_bad == rows ? -1 : first_bad;
}

}  // namespace

int64_t sample_rows(const void* logits, int64_t logits_stride, DType dtype, int64_t rows, int64_t vocab,
                    const SamplingParams& params, int64_t* token_ids, float* truncated_logp, int num_threads) {
  if (rows <= 0) return -1;
  int64_t result = -1;
  vm::dispatch_dtype(dtype, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    result = sample_impl(static_cast<const T*>(logits), logits_stride, rows, vocab, params, token_ids,
                         truncated_logp, std::max(num_threads, 1));
  });
  return result;
}

void sampling_uniforms(int64_t seed, int64_t step, int64_t n, float* out) {
  const RowKey key = row_key(seed, step);
  for (int64_t j = 0; j < n; j += kLanes) vm::store(out + j, uniforms(key, j), n - j);
}

}  // namespace sleepcore::cpu
