// 8-wide fp32 vectors (GCC/Clang vector extensions: one AVX2 register under -march=native,
// split into narrower registers elsewhere) with branch-free exp/log and the loads/stores of the
// three storage dtypes. Nothing here depends on -ffast-math: -inf, subnormals and NaN behave.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__FMA__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace sleepcore::cpu::vm {

constexpr int64_t kLanes = 8;
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
inline f32x8 max(f32x8 a, f32x8 b) { return a > b ? a : b; }
inline f32x8 min(f32x8 a, f32x8 b) { return a < b ? a : b; }

inline f32x8 fma(f32x8 a, f32x8 b, f32x8 c) {
#ifdef __FMA__
  return (f32x8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

template <int N>
inline f32x8 horner(f32x8 x, const float (&c)[N]) {  // c[0] x^(N-1) + ... + c[N-1]
  f32x8 y = splat(c[0]);
  for (int i = 1; i < N; ++i) y = fma(y, x, splat(c[i]));
  return y;
}

// e^x to ~1 ulp (Cephes expf polynomial), subnormal results included; -inf -> 0, NaN -> NaN.
inline f32x8 exp(f32x8 x) {
  constexpr float kShift = 0x1.8p23f;  // x / ln2 + kShift rounds to an integer in the low bits
  static constexpr float kPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                    4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  x = min(max(x, splat(-150.f)), splat(89.f));  // e^-150 rounds to 0, e^89 to inf
  const f32x8 t = fma(x, splat(1.44269504f), splat(kShift));
  const f32x8 n = t - kShift;
  const f32x8 r = fma(n, splat(-kLn2Lo), fma(n, splat(-kLn2Hi), x));  // |r| <= ln2 / 2
  const f32x8 y = fma(horner(r, kPoly), r * r, r) + 1.f;
  // y 2^n, with 2^n split into two normal factors so that subnormal results round once.
  const i32x8 ni = (i32x8)t - (i32x8)splat(kShift);
  const i32x8 n1 = ni >> 1;
  return y * (f32x8)((n1 + 127) << 23) * (f32x8)((ni - n1 + 127) << 23);
}

// ln x to ~1 ulp (Cephes logf polynomial) for positive normal x; callers clamp to FLT_MIN.
inline f32x8 log(f32x8 x) {
  static constexpr float kPoly[] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                                    -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                                    2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  const i32x8 bits = (i32x8)x;
  const i32x8 e = (bits - 0x3f3504f3) >> 23;  // x = m 2^e, m in [sqrt(1/2), sqrt(2))
  const f32x8 f = (f32x8)(bits - (e << 23)) - 1.f;
  const f32x8 fe = __builtin_convertvector(e, f32x8);
  const f32x8 f2 = f * f;
  const f32x8 y = fma(f * f2, horner(f, kPoly), fma(fe, splat(kLn2Lo), f2 * -0.5f));
  return fma(fe, splat(kLn2Hi), f + y);
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
  u16x8 h;
  std::memcpy(&h, p, sizeof h);
  return (f32x8)(__builtin_convertvector(h, u32x8) << 16);
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
  const u32x8 b = (u32x8)v;
  const u32x8 rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const u16x8 h = __builtin_convertvector(
      (b & 0x7fffffffu) > 0x7f800000u ? (b >> 16) | 0x40u : rounded, u16x8);
  std::memcpy(p, &h, sizeof h);
}

inline void store(_Float16* p, f32x8 v) {  // round to nearest even
#ifdef __F16C__
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  for (int i = 0; i < kLanes; ++i) p[i] = static_cast<_Float16>(v[i]);
#endif
}

// The first n elements (all 8 when n >= 8); missing lanes read as -inf, a zero-probability logit.
template <class T>
inline f32x8 load(const T* p, int64_t n) {
  if (n >= kLanes) return load(p);
  T buf[kLanes] = {};
  std::memcpy(buf, p, n * sizeof(T));
  const i32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  return lane < static_cast<int32_t>(n) ? load(buf) : splat(-kInf);
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

}  // namespace sleepcore::cpu::vm
