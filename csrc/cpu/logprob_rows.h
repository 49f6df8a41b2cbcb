// Per-row token log-probabilities and entropies on the CPU (OpenMP over rows).
//
// The kernels work on row chunks of raw logits (`hidden @ weight.T + bias`), so a caller never
// holds N x V. They back ops.fused_linear_logprobs, which serves both the trainer and the rollout
// sampler: a row's results depend on that row alone (fixed per-row reduction order, one thread
// per row), never on the other rows or the chunking. See logprob_rows.cpp for the derivation.
//
// Conventions (shared with the Triton kernels in kernels/logprobs.py):
// * `logits`: [rows, vocab] raw logits, unit column stride, row stride in elements, dtype `dtype`.
//   z = logits / temperature.
// * `token_ids`: [rows] int64; a negative id marks an ignored row (all its outputs are 0, its grad
//   row is 0). An id >= vocab throws std::invalid_argument (pybind11 raises ValueError), checked
//   before anything is written.
// * Outputs are float32 [rows].
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace sleepcore::cpu {

// logp[r] = z[r, id] - lse_r, entropy[r] = lse_r - sum_j p_j z_j (>= 0), lse[r] = logsumexp_j z[r, j].
// `entropy` may be nullptr (not computed).
void logprob_rows(const void* logits, int64_t logits_stride, DType dtype, int64_t rows, int64_t vocab,
                  const int64_t* token_ids, double temperature, float* logp, float* entropy, float* lse,
                  int num_threads);

// Gradient w.r.t. the raw logits of  sum_r grad_logp[r] * logp[r] + grad_entropy[r] * entropy[r]:
//   grad[r, j] = (grad_logp[r] * ([j == id] - p_j) - grad_entropy[r] * p_j * (log p_j + H_r)) / T,
// with p_j = exp(z_j - lse[r]) and H_r = entropy[r] from logprob_rows. `grad_entropy` may be
// nullptr (treated as 0; then `entropy` may be nullptr too). `grad` may alias `logits`.
void logprob_grad_rows(const void* logits, int64_t logits_stride, void* grad, int64_t grad_stride, DType dtype,
                       int64_t rows, int64_t vocab, const int64_t* token_ids, double temperature, const float* lse,
                       const float* entropy, const float* grad_logp, const float* grad_entropy, int num_threads);

}  // namespace sleepcore::cpu
