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
// Work items are query tokens, OpenMP-dynamic; each tile of cache slots is read whole (every kv
// head's K and V rows, prefetched during the previous tile) and the G = heads_q / heads_kv query
// heads sharing a kv head are processed together, so each K and V row is loaded (and converted
// to fp32) once for all G heads. The D-dim dot products and the V accumulation are 8-wide fp32
// vector loops (vm helpers; D need not be a multiple of 8): logits for kUnroll positions at a
// time (kUnroll G independent fma chains), the group size a compile-time constant for the common
// GQA groups (1, 2, 3, 4, 8) so the logit accumulators stay in registers.
//
// Shared prefixes (cascade): decoding sequences whose block tables start with the same full
// blocks (the n forked samples of a prompt) first run those blocks together, tile by tile for
// all members while the tile is in L1, and save their (m, l, acc); each token then resumes from
// its saved state. Tiles restart at every block boundary, so a token goes through exactly the
// same tiles in the same order either way: its output is bitwise the same, and depends only on
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

struct Work {  // a query token (and, for the per-head helpers, one kv head)
  int64_t seq, token, position, kv_head;
};

struct Options {
  int64_t heads_q, group, chunks, max_blocks, window;
  float scale, softcap;
};

// Online-softmax state of the G query heads of one (token, kv head): the scaled query vectors,
// the accumulators (chunks f32x8 each), the running max m and sum l.
struct HeadState {
  f32x8 *q, *acc;
  float *m, *l;
};

// Per-thread scratch: states for up to `members` (token, kv head) items, the logits of a tile.
struct Scratch {
  int64_t group, chunks;
  std::vector<f32x8> q, acc, dot;
  std::vector<float> s, m, l;
  Scratch(int64_t group_, int64_t chunks_, int64_t members)
      : group(group_), chunks(chunks_), q(members * group_ * chunks_), acc(members * group_ * chunks_),
        dot(kUnroll * group_), s(group_ * kTile), m(members * group_), l(members * group_) {}
  HeadState state(int64_t member) {
    return {&q[member * group * chunks], &acc[member * group * chunks], &m[member * group], &l[member * group]};
  }
};

template <class T>
void start_state(const T* q, const Work& w, const Options& o, int64_t head_dim, HeadState st) {
  const int64_t D = head_dim, C = o.chunks;
  for (int64_t g = 0; g < o.group; ++g) {
    const T* qg = q + (w.token * o.heads_q + w.kv_head * o.group + g) * D;
    for (int64_t i = 0; i < C; ++i) {
      st.q[g * C + i] = vm::load(qg + i * kLanes, D - i * kLanes, 0.f) * o.scale;
      st.acc[g * C + i] = f32x8{};
    }
    st.m[g] = -vm::kInf;
    st.l[g] = 0.f;
  }
}

// One online-softmax step over n <= kTile consecutive positions whose K/V rows start at k, v.
// kGroup > 0: the group size as a compile-time constant (loops over heads unroll, the logits'
// accumulators stay in registers); 0: o.group at run time. kWholeChunks: head_dim is a multiple
// of 8, so every chunk load is a plain vector load (no tail branch, which would keep the
// compiler from holding the accumulators in registers).
template <int kGroup, bool kWholeChunks, class T>
void attend_tile(const T* k, const T* v, int64_t n, int64_t row, int64_t head_dim, const Options& o, HeadState st,
                 Scratch& sc) {
  const int64_t D = head_dim, G = kGroup > 0 ? kGroup : o.group, C = o.chunks;
  f32x8 local_dot[kUnroll * (kGroup > 0 ? kGroup : 1)];
  f32x8* dot = kGroup > 0 ? local_dot : sc.dot.data();
  auto chunk = [&](const T* x, int64_t i) {
    return kWholeChunks ? vm::load(x + i * kLanes) : vm::load(x + i * kLanes, D - i * kLanes, 0.f);
  };
  for (int64_t j = 0; j < n; j += kUnroll) {  // logits of kUnroll positions: kUnroll G independent fma chains
    int64_t js[kUnroll];
    for (int64_t u = 0; u < kUnroll; ++u) js[u] = std::min(j + u, n - 1);  // tail: repeat the last position
    for (int64_t g = 0; g < kUnroll * G; ++g) dot[g] = f32x8{};
    for (int64_t i = 0; i < C; ++i) {
      f32x8 kv[kUnroll];
      for (int64_t u = 0; u < kUnroll; ++u) kv[u] = chunk(k + js[u] * row, i);
      for (int64_t g = 0; g < G; ++g) {
        const f32x8 qg = st.q[g * C + i];
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
    const float m_new = std::max(st.m[g], *std::max_element(s, s + n));
    const float a = std::exp(st.m[g] - m_new);
    f32x8 sum = f32x8{};
    for (int64_t j = 0; j < n; j += kLanes) {
      const f32x8 e = vm::exp(vm::load(s + j, n - j, -vm::kInf) - m_new);
      vm::store(s + j, e, n - j);
      sum += e;
    }
    st.l[g] = st.l[g] * a + sum8(sum);
    st.m[g] = m_new;
    for (int64_t i = 0; i < C; ++i) st.acc[g * C + i] *= a;
  }
  for (int64_t g = 0; g < G; ++g) {  // acc += e_j v_j: 4 accumulators at a time stay in registers
    const float* e = &sc.s[g * kTile];
    f32x8* acc = st.acc + g * C;
    auto v_chunk = [&](int64_t j, int64_t i) { return chunk(v + j * row, i); };
    int64_t i = 0;
    for (; i + 4 <= C; i += 4) {
      f32x8 a0 = acc[i], a1 = acc[i + 1], a2 = acc[i + 2], a3 = acc[i + 3];
      for (int64_t j = 0; j < n; ++j) {
        const f32x8 w = vm::splat(e[j]);
        a0 = vm::fma(w, v_chunk(j, i), a0);
        a1 = vm::fma(w, v_chunk(j, i + 1), a1);
        a2 = vm::fma(w, v_chunk(j, i + 2), a2);
        a3 = vm::fma(w, v_chunk(j, i + 3), a3);
      }
      acc[i] = a0, acc[i + 1] = a1, acc[i + 2] = a2, acc[i + 3] = a3;
    }
    for (; i < C; ++i) {
      f32x8 a = acc[i];
      for (int64_t j = 0; j < n; ++j) a = vm::fma(vm::splat(e[j]), v_chunk(j, i), a);
      acc[i] = a;
    }
  }
}

// Calls step(k, v, n) for the tiles of positions [p, hi) of a sequence: at most kTile positions,
// never crossing a cache block, so the tiling of a range that starts on a block boundary is the
// same as the tiling of the whole sequence. k and v point at the tile's first slot (all kv heads);
// the next tile's slots are prefetched while step runs.
template <class T, class Step>
void for_each_tile(const T* k_cache, const T* v_cache, const CacheShape& c, const int32_t* table, int64_t p,
                   int64_t hi, Step&& step) {
  const int64_t row = c.heads_kv * c.head_dim;  // elements per slot
  const int64_t row_bytes = row * static_cast<int64_t>(sizeof(T));
  auto tile_at = [&](int64_t position, int64_t& n) {
    const int64_t block = table[position / c.block_size], offset = position % c.block_size;
    n = std::min({kTile, hi - position, c.block_size - offset});
    return (block * c.block_size + offset) * row;
  };
  int64_t n = 0, base = p < hi ? tile_at(p, n) : 0;
  while (p < hi) {
    int64_t next_n = 0;
    const int64_t next = p + n < hi ? tile_at(p + n, next_n) : -1;
    if (next >= 0) {  // the next tile is usually another block, elsewhere: fetch it during this one
      const char* k_next = reinterpret_cast<const char*>(k_cache + next);
      const char* v_next = reinterpret_cast<const char*>(v_cache + next);
      for (int64_t b = 0; b < next_n * row_bytes; b += 64) {
        __builtin_prefetch(k_next + b);
        __builtin_prefetch(v_next + b);
      }
    }
    step(k_cache + base, v_cache + base, n);
    p += n;
    base = next;
    n = next_n;
  }
}

template <class T>
void finish_state(T* out, const Work& w, const Options& o, int64_t head_dim, HeadState st) {
  for (int64_t g = 0; g < o.group; ++g) {
    T* og = out + (w.token * o.heads_q + w.kv_head * o.group + g) * head_dim;
    const f32x8 inv = vm::splat(1.f / st.l[g]);
    for (int64_t i = 0; i < o.chunks; ++i) vm::store(og + i * kLanes, st.acc[g * o.chunks + i] * inv, head_dim - i * kLanes);
  }
}

// Decoding sequences whose block tables start with the same `prefix_blocks` blocks (forked
// samples of one prompt): the shared prefix is attended once per tile for all of them, with
// each tile's K/V still in L1 for every member after the first.
struct PrefixGroup {
  std::vector<int64_t> seqs;
  int64_t prefix_blocks;
};

std::vector<PrefixGroup> prefix_groups(const CacheShape& c, const int32_t* tables, int64_t max_blocks,
                                       const int64_t* context_lens, const int64_t* query_start, int64_t num_seqs,
                                       int64_t window) {
  std::vector<PrefixGroup> groups;
  if (window > 0) return groups;
  std::vector<int64_t> order;
  for (int64_t b = 0; b < num_seqs; ++b) {
    if (query_start[b + 1] - query_start[b] == 1 && context_lens[b] >= c.block_size) order.push_back(b);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return tables[a * max_blocks] < tables[b * max_blocks]; });
  for (size_t i = 0; i < order.size();) {
    size_t j = i + 1;
    const int32_t* first = tables + order[i] * max_blocks;
    while (j < order.size() && tables[order[j] * max_blocks] == first[0]) ++j;
    if (j - i >= 2) {
      PrefixGroup group{{order.begin() + i, order.begin() + j}, max_blocks};
      for (int64_t b : group.seqs) {  // full blocks, all at or before every member's position
        const int32_t* t = tables + b * max_blocks;
        int64_t shared = 0;
        const int64_t limit = std::min(group.prefix_blocks, context_lens[b] / c.block_size);
        while (shared < limit && t[shared] == first[shared]) ++shared;
        group.prefix_blocks = shared;
      }
      groups.push_back(std::move(group));
    }
    i = j;
  }
  return groups;
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
  // one item per query token, all kv heads: a tile's slots (every head's K and V rows) are read
  // whole and stay in L1 while each head attends to them
  std::vector<Work> work;
  work.reserve(total_q);
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t first = context_lens[b] - (query_start[b + 1] - query_start[b]);
    for (int64_t t = query_start[b]; t < query_start[b + 1]; ++t) work.push_back({b, t, first + t - query_start[b], 0});
  }
  const std::vector<PrefixGroup> groups =
      prefix_groups(c, block_tables, max_blocks, context_lens, query_start, num_seqs, sliding_window);
  // a grouped decode token's state after its group's prefix: [token][kv head] -> (acc, m, l) of G heads
  const int64_t state_floats = o.group * (o.chunks * kLanes + 2);
  std::vector<int64_t> resume_at(num_seqs, 0);
  for (const PrefixGroup& g : groups)
    for (int64_t b : g.seqs) resume_at[b] = g.prefix_blocks * c.block_size;
  std::vector<float> saved(groups.empty() ? 0 : total_q * c.heads_kv * state_floats);
  size_t largest = 1;
  for (const PrefixGroup& g : groups) largest = std::max(largest, g.seqs.size());
  const int64_t H = c.heads_kv, row = H * c.head_dim;
  const int64_t num_groups = static_cast<int64_t>(groups.size()), items = static_cast<int64_t>(work.size());
  vm::dispatch_dtype(dtype, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* qs = static_cast<const T*>(q);
    const T* kc = static_cast<const T*>(k_cache);
    const T* vc = static_cast<const T*>(v_cache);
    auto with_group = [&](auto&& body) {  // compile-time group size (common GQA groups) and chunking
      auto sized = [&](auto group) {
        if (c.head_dim % kLanes == 0) {
          body(group, std::true_type{});
        } else {
          body(group, std::false_type{});
        }
      };
      switch (o.group) {
        case 1: sized(std::integral_constant<int, 1>{}); break;
        case 2: sized(std::integral_constant<int, 2>{}); break;
        case 3: sized(std::integral_constant<int, 3>{}); break;
        case 4: sized(std::integral_constant<int, 4>{}); break;
        case 8: sized(std::integral_constant<int, 8>{}); break;
        default: sized(std::integral_constant<int, 0>{});
      }
    };
    auto state_slot = [&](int64_t token, int64_t h) { return saved.data() + (token * H + h) * state_floats; };
    const int64_t acc_floats = o.group * o.chunks * kLanes;
    auto save = [&](HeadState st, float* dst) {
      std::memcpy(dst, st.acc, acc_floats * sizeof(float));
      std::memcpy(dst + acc_floats, st.m, o.group * sizeof(float));
      std::memcpy(dst + acc_floats + o.group, st.l, o.group * sizeof(float));
    };
    auto load = [&](HeadState st, const float* src) {
      std::memcpy(st.acc, src, acc_floats * sizeof(float));
      std::memcpy(st.m, src + acc_floats, o.group * sizeof(float));
      std::memcpy(st.l, src + acc_floats + o.group, o.group * sizeof(float));
    };
#pragma omp parallel num_threads(std::max(num_threads, 1))
    {
      Scratch scratch(o.group, o.chunks, static_cast<int64_t>(largest) * H);
      // 1. shared prefixes: each tile once for all the group's members and heads
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < num_groups; ++i) {
        const PrefixGroup& g = groups[i];
        const int64_t members = static_cast<int64_t>(g.seqs.size());
        for (int64_t s = 0; s < members; ++s)
          for (int64_t h = 0; h < H; ++h)
            start_state(qs, Work{g.seqs[s], query_start[g.seqs[s]], 0, h}, o, c.head_dim, scratch.state(s * H + h));
        with_group([&](auto kgroup, auto whole) {
          for_each_tile(kc, vc, c, block_tables + g.seqs[0] * max_blocks, 0, g.prefix_blocks * c.block_size,
                        [&](const T* k, const T* v, int64_t n) {
                          for (int64_t s = 0; s < members; ++s)
                            for (int64_t h = 0; h < H; ++h)
                              attend_tile<decltype(kgroup)::value, decltype(whole)::value>(k + h * c.head_dim, v + h * c.head_dim, n, row,
                                                                   c.head_dim, o, scratch.state(s * H + h), scratch);
                        });
        });
        for (int64_t s = 0; s < members; ++s)
          for (int64_t h = 0; h < H; ++h) save(scratch.state(s * H + h), state_slot(query_start[g.seqs[s]], h));
      }
      // 2. every token: from its group's saved states, or from the start
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < items; ++i) {
        const Work& w = work[i];
        const int64_t resume = resume_at[w.seq];
        for (int64_t h = 0; h < H; ++h) {
          start_state(qs, Work{w.seq, w.token, w.position, h}, o, c.head_dim, scratch.state(h));
          if (resume > 0) load(scratch.state(h), state_slot(w.token, h));
        }
        const int64_t lo = o.window > 0 ? std::max<int64_t>(0, w.position - o.window + 1) : resume;
        with_group([&](auto kgroup, auto whole) {
          for_each_tile(kc, vc, c, block_tables + w.seq * max_blocks, lo, w.position + 1,
                        [&](const T* k, const T* v, int64_t n) {
                          for (int64_t h = 0; h < H; ++h)
                            attend_tile<decltype(kgroup)::value, decltype(whole)::value>(k + h * c.head_dim, v + h * c.head_dim, n, row,
                                                                 c.head_dim, o, scratch.state(h), scratch);
                        });
        });
        for (int64_t h = 0; h < H; ++h)
          finish_state(static_cast<T*>(out), Work{w.seq, w.token, w.position, h}, o, c.head_dim, scratch.state(h));
      }
    }
  });
}

}  // namespace sleepcore::cpu
