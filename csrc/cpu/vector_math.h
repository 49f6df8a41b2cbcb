// 8-wide fp32 vectors (GCC/Clang vector extensions: one AVX2 register under -march=native,
// split into narrower registers elsewhere) with branch-free exp/log and the loads/stores of the
// three storage dtypes. Nothing here depends on -ffast-math: -inf, subnormals and NaN behave.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu/dtype.h"

namespace sleepcore::cpu::vm {

constexpr int64_t kLanes = 8;
constexpr int64_t kBlock = 2048;  // elements per fp32 partial sum in the row kernels' reductions
using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = int32_t __attribute__((vector_size(32)));
using u32x8 = uint32_t __attribute__((vector_size(32)));
using u16x8 = uint16_t __attribute__((vector_size(16)));

// Storage types: float, BFloat16 (the upper half of an fp32) and _Float16.
struct BFloat16 {
  uint16_t bits;
};

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kLn2Hi = 0.693359375f;       // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi has 9 bits
constexpr float kLn2Lo = -2.12194440e-4f;

inline f32x8 splat(float v) { return f32x8{} + v; }

// a > b ? a : b and a < b ? a : b: b when either is NaN (the semantics of vmaxps / vminps).
inline f32x8 max(f32x8 a, f32x8 b) {
#ifdef __AVX__
  return (f32x8)_mm256_max_ps((__m256)a, (__m256)b);
#else
  return a > b ? a : b;
#endif
}
inline f32x8 min(f32x8 a, f32x8 b) {
#ifdef __AVX__
  return (f32x8)_mm256_min_ps((__m256)a, (__m256)b);
#else
  return a < b ? a : b;
#endif
}

inline f32x8 fma(f32x8 a, f32x8 b, f32x8 c) {
#ifdef __FMA__
  return (f32x8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// c0 + c1 x + c2 x^2 + c3 x^3 (Estrin: short dependency chains keep the out-of-order window full).
inline f32x8 poly3(f32x8 x, f32x8 x2, float c0, float c1, float c2, float c3) {
  return fma(fma(splat(c3), x, splat(c2)), x2, fma(splat(c1), x, splat(c0)));
}

// e^x for x <= 71 (larger x saturate to e^71), < 1 ulp on [-104, 71] including subnormal results;
// x < -104 (and -inf) -> 0, NaN -> NaN. Callers pass log-probs, so x <= 0 up to rounding.
// x = n ln2 + r with |r| <= ln2/2; e^r = 1 + r + r^2 P(r), P a degree-4 minimax fit (rel. error
// 3e-9); 2^n = 2^(n+24) 2^-24, the first factor normal down to n = -150 so that subnormal results
// are rounded once. exp_clamped is the same for x already in [-104, 71] (or NaN): no clamping.
inline f32x8 exp_clamped(f32x8 x) {
  constexpr float kShift = 0x1.8p23f + 151;  // x/ln2 + kShift holds n + 151 in its low bits
  const f32x8 t = fma(x, splat(1.44269504f), splat(kShift));
  const f32x8 n = t - kShift;
  const f32x8 r = fma(n, splat(-kLn2Lo), fma(n, splat(-kLn2Hi), x));
  const f32x8 r2 = r * r;
  const f32x8 p = fma(poly3(r, r2, 1.666652113e-1f, 4.166838899e-2f, 8.368710987e-3f,
                            1.381460461e-3f), r, splat(4.999999404e-1f));
  const f32x8 y = fma(p, r2, r) + 1.f;
  return y * (f32x8)((i32x8)t << 23) * 0x1p-24f;
}
inline f32x8 exp(f32x8 x) { return exp_clamped(min(splat(71.f), max(splat(-104.f), x))); }

// ln x to < 1 ulp for finite positive normal x (callers clamp to FLT_MIN); NaN -> NaN.
// x = m 2^e with m in [sqrt(1/2), sqrt(2)), f = m - 1, ln(1 + f) = f - f^2/2 + f^3 Q(f) with Q a
// degree-7 minimax fit (rel. error 6e-9).
inline f32x8 log(f32x8 x) {
  const i32x8 bits = (i32x8)x;
  const i32x8 e = (bits - 0x3f3504f3) >> 23;
  const f32x8 f = (f32x8)(bits - (e << 23)) - 1.f;
  const f32x8 fe = __builtin_convertvector(e, f32x8);
  const f32x8 f2 = f * f;
  const f32x8 q = fma(poly3(f, f2, 1.420177370e-1f, -1.316023767e-1f, 1.276148707e-1f,
                            -7.634237409e-2f), f2 * f2,
                      poly3(f, f2, 3.333333135e-1f, -2.500082254e-1f, 2.000122666e-1f,
                            -1.662335396e-1f));
  const f32x8 y = fma(f * f2, q, fma(fe, splat(kLn2Lo), f2 * -0.5f));
  return fma(fe, splat(kLn2Hi), f + y) + (x - x);  // x - x: 0, or NaN for NaN (and inf)
}

inline double hsum(f32x8 v) {
  double s = 0;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

inline float hmax(f32x8 v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// ---- loads / stores of 8 elements -------------------------------------------------------------

inline f32x8 load(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline f32x8 load(const BFloat16* p) {
#ifdef __AVX2__
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return (f32x8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
#else
  u16x8 h;
  std::memcpy(&h, p, sizeof h);
  return (f32x8)(__builtin_convertvector(h, u32x8) << 16);
#endif
}

inline f32x8 load(const _Float16* p) {
#ifdef __F16C__
  return (f32x8)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  f32x8 v;
  for (int i = 0; i < kLanes; ++i) v[i] = static_cast<float>(p[i]);
  return v;
#endif
}

inline void store(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }

inline void store(BFloat16* p, f32x8 v) {  // round to nearest even, NaN stays a (quiet) NaN
#ifdef __AVX2__
  const __m256i b = (__m256i)v, hi = _mm256_srli_epi32(b, 16);
  const __m256i bias = _mm256_add_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(1)),
                                        _mm256_set1_epi32(0x7fff));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(b, bias), 16);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i h = _mm256_blendv_epi8(rounded, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);  // lanes 0, 2
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
#else
  const u32x8 b = (u32x8)v;
  const u32x8 rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const u16x8 h = __builtin_convertvector(
      (b & 0x7fffffffu) > 0x7f800000u ? (b >> 16) | 0x40u : rounded, u16x8);
  std::memcpy(p, &h, sizeof h);
#endif
}

inline void store(_Float16* p, f32x8 v) {  // round to nearest even
#ifdef __F16C__
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  for (int i = 0; i < kLanes; ++i) p[i] = static_cast<_Float16>(v[i]);
#endif
}

// The first n elements (all 8 when n >= 8); missing lanes read as fill (-inf for logits and
// log-probs, 0 for probabilities, so that they add nothing).
template <class T>
inline f32x8 load(const T* p, int64_t n, float fill) {
  if (n >= kLanes) return load(p);
  T buf[kLanes] = {};
  std::memcpy(buf, p, n * sizeof(T));
  const i32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  return lane < static_cast<int32_t>(n) ? load(buf) : splat(fill);
}

template <class T>
inline void store(T* p, f32x8 v, int64_t n) {
  if (n >= kLanes) return store(p, v);
  T buf[kLanes];
  store(buf, v);
  std::memcpy(p, buf, n * sizeof(T));
}

// Lanes whose byte in p[0, n) is nonzero (missing lanes: 0).
inline i32x8 load_flags(const uint8_t* p, int64_t n) {
  using u8x8 = uint8_t __attribute__((vector_size(8)));
  u8x8 b = {};
  std::memcpy(&b, p, n < kLanes ? n : kLanes);
  return __builtin_convertvector(b, i32x8) != 0;
}

// Calls fn(T*) with T the storage type of dtype (a null pointer, for type deduction only).
template <class Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(static_cast<float*>(nullptr));
    case DType::BFloat16: return fn(static_cast<BFloat16*>(nullptr));
    case DType::Float16: return fn(static_cast<_Float16*>(nullptr));
  }
  throw std::invalid_argument("sleepcore: unsupported dtype code");
}

}  // namespace sleepcore::cpu::vm
