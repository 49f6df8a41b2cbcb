// Paged KV cache writes and variable-length causal attention over it on the CPU.
//
// Attention, one query vector q (already multiplied by scale) against the positions P of its
// window, in one pass with an online softmax (flash-attention): positions arrive in tiles that
// never cross a cache block; for a tile with logits s_j (softcapped: c tanh(s_j / c)),
//   m' = max(m, max_j s_j),  a = e^(m - m'),  l' = a l + sum_j e^(s_j - m'),
//   acc' = a acc + sum_j e^(s_j - m') v_j,
// and out = acc / l at the end. m starts at -inf (a = 0 on the first tile); every tile holds at
// least one position (the query's own position is always in its window), so m' is finite and
// l >= 1.
//
// Work items are (query token, kv head) pairs, OpenMP-dynamic: the G = heads_q / heads_kv query
// heads sharing a kv head are processed together, so each K and V row is loaded (and converted
// to fp32) once for all G heads. The D-dim dot products and the V accumulation are 8-wide fp32
// vector loops (vm helpers; D need not be a multiple of 8): logits for kUnroll positions at a
// time (kUnroll G independent fma chains), the group size a compile-time constant for the common
// GQA groups (1, 2, 3, 4, 8) so the logit accumulators stay in registers. A token's output depends only on
// its own query, its sequence's cache and the options, never on the batch composition.
#include "paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "vector_math.h"

namespace sleepcore::cpu {
namespace {

using vm::f32x8;
using vm::kLanes;
constexpr int64_t kTile = 32;  // positions per online-softmax step (at most; tiles stop at block ends)
constexpr int64_t kUnroll = 4;  // positions per logits step

size_t dtype_size(DType dtype) { return dtype == DType::Float32 ? 4 : 2; }

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument(what); }

inline float sum8(f32x8 v) {
  const f32x8 a = v + __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
  const f32x8 b = a + __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5);
  return b[0] + b[1];
}

struct Work {  // one (query token, kv head) item
  int64_t seq, token, position, kv_head;
};

struct Options {
  int64_t heads_q, group, chunks, max_blocks, window;
  float scale, softcap;
};

// Per-thread scratch: G query vectors and accumulators (chunks f32x8 each), logits of a tile.
struct Scratch {
  std::vector<f32x8> q, acc, dot;
  std::vector<float> s, m, l;
  Scratch(int64_t group, int64_t chunks)
      : q(group * chunks), acc(group * chunks), dot(kUnroll * group), s(group * kTile), m(group), l(group) {}
};

// kGroup > 0: the group size as a compile-time constant (loops over heads unroll, the logits'
// accumulators stay in registers); 0: o.group at run time.
template <int kGroup, class T>
void attend(const T* q, const T* k_cache, const T* v_cache, T* out, const CacheShape& c, const int32_t* table,
            const Work& w, const Options& o, Scratch& sc) {
  const int64_t D = c.head_dim, G = kGroup > 0 ? kGroup : o.group, C = o.chunks;
  f32x8 local_dot[kUnroll * (kGroup > 0 ? kGroup : 1)];
  f32x8* dot = kGroup > 0 ? local_dot : sc.dot.data();
  const int64_t row = c.heads_kv * D;  // elements per slot
  for (int64_t g = 0; g < G; ++g) {
    const T* qg = q + (w.token * o.heads_q + w.kv_head * G + g) * D;
    for (int64_t i = 0; i < C; ++i) {
      sc.q[g * C + i] = vm::load(qg + i * kLanes, D - i * kLanes, 0.f) * o.scale;
      sc.acc[g * C + i] = f32x8{};
    }
    sc.m[g] = -vm::kInf;
    sc.l[g] = 0.f;
  }
  const int64_t hi = w.position + 1;
  int64_t p = o.window > 0 ? std::max<int64_t>(0, w.position - o.window + 1) : 0;
  while (p < hi) {
    const int64_t block = table[p / c.block_size], offset = p % c.block_size;
    const int64_t n = std::min({kTile, hi - p, c.block_size - offset});
    const int64_t base = (block * c.block_size + offset) * row + w.kv_head * D;
    const T* k = k_cache + base;
    const T* v = v_cache + base;
    for (int64_t j = 0; j < n; j += kUnroll) {  // logits of kUnroll positions: kUnroll G independent fma chains
      int64_t js[kUnroll];
      for (int64_t u = 0; u < kUnroll; ++u) js[u] = std::min(j + u, n - 1);  // tail: repeat the last position
      for (int64_t g = 0; g < kUnroll * G; ++g) dot[g] = f32x8{};
      for (int64_t i = 0; i < C; ++i) {
        f32x8 kv[kUnroll];
        for (int64_t u = 0; u < kUnroll; ++u) kv[u] = vm::load(k + js[u] * row + i * kLanes, D - i * kLanes, 0.f);
        for (int64_t g = 0; g < G; ++g) {
          const f32x8 qg = sc.q[g * C + i];
          for (int64_t u = 0; u < kUnroll; ++u) dot[kUnroll * g + u] = vm::fma(qg, kv[u], dot[kUnroll * g + u]);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t u = 0; u < kUnroll; ++u) {
          float s = sum8(dot[kUnroll * g + u]);
          if (o.softcap > 0) s = o.softcap * std::tanh(s / o.softcap);
          sc.s[g * kTile + js[u]] = s;
        }
      }
    }
    for (int64_t g = 0; g < G; ++g) {  // online softmax step: s -> e^(s - m'), rescale acc
      float* s = &sc.s[g * kTile];
      const float m_new = std::max(sc.m[g], *std::max_element(s, s + n));
      const float a = std::exp(sc.m[g] - m_new);
      f32x8 sum = f32x8{};
      for (int64_t j = 0; j < n; j += kLanes) {
        const f32x8 e = vm::exp(vm::load(s + j, n - j, -vm::kInf) - m_new);
        vm::store(s + j, e, n - j);
        sum += e;
      }
      sc.l[g] = sc.l[g] * a + sum8(sum);
      sc.m[g] = m_new;
      for (int64_t i = 0; i < C; ++i) sc.acc[g * C + i] *= a;
    }
    for (int64_t j = 0; j < n; ++j) {  // acc += e_j v_j
      for (int64_t i = 0; i < C; ++i) {
        const f32x8 vv = vm::load(v + j * row + i * kLanes, D - i * kLanes, 0.f);
        for (int64_t g = 0; g < G; ++g) {
          sc.acc[g * C + i] = vm::fma(vm::splat(sc.s[g * kTile + j]), vv, sc.acc[g * C + i]);
        }
      }
    }
    p += n;
  }
  for (int64_t g = 0; g < G; ++g) {
    T* og = out + (w.token * o.heads_q + w.kv_head * G + g) * D;
    const f32x8 inv = vm::splat(1.f / sc.l[g]);
    for (int64_t i = 0; i < C; ++i) vm::store(og + i * kLanes, sc.acc[g * C + i] * inv, D - i * kLanes);
  }
}

// Every index value the kernel will use, checked before anything is computed or written.
void check_indices(const CacheShape& c, const int32_t* tables, int64_t max_blocks, const int64_t* context_lens,
                   const int64_t* query_start, int64_t num_seqs, int64_t total_q) {
  if (query_start[0] != 0 || query_start[num_seqs] != total_q) {
    bad("query_start must start at 0 and end at total_q = " + std::to_string(total_q));
  }
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t n = query_start[b + 1] - query_start[b], len = context_lens[b];
    const std::string seq = " (sequence " + std::to_string(b) + ")";
    if (n < 0) bad("query_start must be non-decreasing" + seq);
    if (len < n) bad("context_lens must be >= the sequence's query count" + seq);
    if (len > max_blocks * c.block_size) bad("context_lens exceeds block_tables' capacity" + seq);
    for (int64_t i = 0; i < (len + c.block_size - 1) / c.block_size; ++i) {
      const int32_t block = tables[b * max_blocks + i];
      if (block < 0 || block >= c.num_blocks) {
        bad("block_tables: block " + std::to_string(block) + " out of range [0, " + std::to_string(c.num_blocks) +
            ")" + seq);
      }
    }
  }
}

}  // namespace

void write_kv(const void* k, const void* v, void* k_cache, void* v_cache, DType dtype, const CacheShape& c,
              const int64_t* slot_mapping, int64_t tokens, int num_threads) {
  const int64_t slots = c.num_blocks * c.block_size;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slot_mapping[t] >= slots) {
      bad("slot_mapping: slot " + std::to_string(slot_mapping[t]) + " (token " + std::to_string(t) +
          ") out of range [0, " + std::to_string(slots) + ")");
    }
  }
  const size_t bytes = c.heads_kv * c.head_dim * dtype_size(dtype);
  const auto* ks = static_cast<const char*>(k);
  const auto* vs = static_cast<const char*>(v);
  auto* kd = static_cast<char*>(k_cache);
  auto* vd = static_cast<char*>(v_cache);
#pragma omp parallel for num_threads(std::max(num_threads, 1)) schedule(static) if (tokens * bytes > 65536)
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t s = slot_mapping[t];
    if (s < 0) continue;
    std::memcpy(kd + s * bytes, ks + t * bytes, bytes);
    std::memcpy(vd + s * bytes, vs + t * bytes, bytes);
  }
}

void copy_blocks(void* k_cache, void* v_cache, DType dtype, const CacheShape& c, const int64_t* pairs,
                 int64_t num_pairs) {
  for (int64_t i = 0; i < 2 * num_pairs; ++i) {
    if (pairs[i] < 0 || pairs[i] >= c.num_blocks) {
      bad("pairs: block " + std::to_string(pairs[i]) + " (pair " + std::to_string(i / 2) + ") out of range [0, " +
          std::to_string(c.num_blocks) + ")");
    }
  }
  const size_t bytes = c.block_size * c.heads_kv * c.head_dim * dtype_size(dtype);
  for (auto* cache : {static_cast<char*>(k_cache), static_cast<char*>(v_cache)}) {
    for (int64_t i = 0; i < num_pairs; ++i) {
      if (pairs[2 * i] != pairs[2 * i + 1]) {
        std::memcpy(cache + pairs[2 * i + 1] * bytes, cache + pairs[2 * i] * bytes, bytes);
      }
    }
  }
}

void paged_attention(const void* q, const void* k_cache, const void* v_cache, void* out, DType dtype,
                     const CacheShape& c, int64_t heads_q, const int32_t* block_tables, int64_t max_blocks,
                     const int64_t* context_lens, const int64_t* query_start, int64_t num_seqs, int64_t total_q,
                     float scale, int64_t sliding_window, float softcap, int num_threads) {
  check_indices(c, block_tables, max_blocks, context_lens, query_start, num_seqs, total_q);
  const Options o{heads_q, heads_q / c.heads_kv, (c.head_dim + kLanes - 1) / kLanes, max_blocks,
                  sliding_window, scale, softcap};
  std::vector<Work> work;
  work.reserve(total_q * c.heads_kv);
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t first = context_lens[b] - (query_start[b + 1] - query_start[b]);
    for (int64_t t = query_start[b]; t < query_start[b + 1]; ++t) {
      for (int64_t h = 0; h < c.heads_kv; ++h) work.push_back({b, t, first + t - query_start[b], h});
    }
  }
  const int64_t items = static_cast<int64_t>(work.size());
  vm::dispatch_dtype(dtype, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
#pragma omp parallel num_threads(std::max(num_threads, 1))
    {
      Scratch scratch(o.group, o.chunks);
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < items; ++i) {
        const int32_t* table = block_tables + work[i].seq * max_blocks;
        auto run = [&](auto group) {
          attend<decltype(group)::value>(static_cast<const T*>(q), static_cast<const T*>(k_cache),
                                         static_cast<const T*>(v_cache), static_cast<T*>(out), c, table, work[i], o,
                                         scratch);
        };
        switch (o.group) {  // the group sizes of common GQA models
          case 1: run(std::integral_constant<int, 1>{}); break;
          case 2: run(std::integral_constant<int, 2>{}); break;
          case 3: run(std::integral_constant<int, 3>{}); break;
          case 4: run(std::integral_constant<int, 4>{}); break;
          case 8: run(std::integral_constant<int, 8>{}); break;
          default: run(std::integral_constant<int, 0>{});
        }
      }
    }
  });
}

}  // namespace sleepcore::cpu
