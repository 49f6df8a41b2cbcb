// Paged KV cache and variable-length causal attention over it on the CPU (OpenMP).
//
// Cache layout (flash-attn's flash_attn_with_kvcache, vLLM's block tables): per layer
// k_cache, v_cache [num_blocks, block_size, heads_kv, head_dim], contiguous, dtype `dtype`. Slot
// s = block * block_size + offset holds one token's heads_kv x head_dim row.
//
// Conventions (shared with the Triton kernels in kernels/paged_attention.py):
// * q, out: [total_q, heads_q, head_dim] contiguous, the new query tokens of num_seqs sequences
//   back to back; query_start [num_seqs + 1] int64 cumulative offsets into q.
// * context_lens [num_seqs] int64: tokens whose KV is cached, the new ones included. The i-th new
//   token of sequence b (n_b of them) sits at position context_lens[b] - n_b + i and attends to
//   cache positions p with p <= position and, when sliding_window > 0, p > position - window.
// * block_tables [num_seqs, max_blocks] int32: position p of sequence b is in block
//   block_tables[b][p / block_size] at offset p % block_size.
// * GQA: query head h reads kv head h / (heads_q / heads_kv).
// * logits = scale q.k, then softcap tanh(logits / softcap) when softcap > 0; softmax and
//   accumulation in fp32; out in `dtype`.
// Index values are checked before anything is written: bad ones throw std::invalid_argument
// (pybind11 raises ValueError) naming the argument.
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace sleepcore::cpu {

struct CacheShape {
  int64_t num_blocks, block_size, heads_kv, head_dim;
};

// k_cache[slot], v_cache[slot] = k[n], v[n] for every n with slot = slot_mapping[n] >= 0
// (k, v: [tokens, heads_kv, head_dim] contiguous, same dtype as the caches).
void write_kv(const void* k, const void* v, void* k_cache, void* v_cache, DType dtype, const CacheShape& cache,
              const int64_t* slot_mapping, int64_t tokens, int num_threads);

// Block pairs[i][1] of both caches becomes a copy of block pairs[i][0], in order i = 0, 1, ...
void copy_blocks(void* k_cache, void* v_cache, DType dtype, const CacheShape& cache, const int64_t* pairs,
                 int64_t num_pairs);

void paged_attention(const void* q, const void* k_cache, const void* v_cache, void* out, DType dtype,
                     const CacheShape& cache, int64_t heads_q, const int32_t* block_tables, int64_t max_blocks,
                     const int64_t* context_lens, const int64_t* query_start, int64_t num_seqs, int64_t total_q,
                     float scale, int64_t sliding_window, float softcap, int num_threads);

}  // namespace sleepcore::cpu
