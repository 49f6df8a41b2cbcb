// Per-row token sampling on the CPU (OpenMP over rows): temperature, top-k, top-p, min-p, and a
// counter-based Gumbel-max draw. See sampling.cpp for the maths.
//
// Conventions (shared with the Triton kernel in kernels/sampling.py; the ops layer,
// python/sleepcore/ops/sampling.py, has checked the arguments):
// * `logits`: [rows, vocab] raw logits, unit column stride, row stride in elements, dtype `dtype`.
//   -inf entries are masked tokens; NaN or +inf make the row invalid (see the return value).
// * Per-row parameters, each [rows]: temperature (float64, 0 = greedy argmax;
//   float64 so that 1 / T rounds as in logprob_rows for the same Python float), top_k (int64,
//   0 = off, >= vocab = off), top_p (float32 in (0, 1], 1 = off), min_p (float32 in [0, 1),
//   0 = off), seeds and steps (int64: the row's random stream is a function of (seed, step) only).
// * Outputs [rows]: token_ids int64, truncated_logp float32 (the token's log-prob under the
//   renormalised allowed distribution; 0 for greedy rows).
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace sleepcore::cpu {

struct SamplingParams {
  const double* temperature;
  const int64_t* top_k;
  const float* top_p;
  const float* min_p;
  const int64_t* seeds;
  const int64_t* steps;
};

// Returns -1, or the first row whose logits hold a NaN or +inf (or no finite entry); rows are
// sampled either way (an invalid row's outputs are unspecified).
int64_t sample_rows(const void* logits, int64_t logits_stride, DType dtype, int64_t rows, int64_t vocab,
                    const SamplingParams& params, int64_t* token_ids, float* truncated_logp, int num_threads);

// The uniform U(seed, step, j) in (0, 1) the draw of token j uses ((2u + 1) 2^-24, u 23 hash bits),
// for tests: `out` gets j = 0 .. n - 1.
void sampling_uniforms(int64_t seed, int64_t step, int64_t n, float* out);

}  // namespace sleepcore::cpu
