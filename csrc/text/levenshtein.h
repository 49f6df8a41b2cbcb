// Batched, banded Levenshtein (edit) distance on the CPU (OpenMP over pairs). See
// levenshtein.cpp for the recurrence, the band and the early exit.
//
// Conventions (the Python layer, python/sleepcore/sleep/rewards.py, has checked the arguments):
// * Pair p compares a[a_offsets[p] : a_offsets[p + 1]] with b[b_offsets[p] : b_offsets[p + 1]]:
//   `a` and `b` are the sequences of each side concatenated, the offsets [pairs + 1] int64,
//   non-decreasing, starting at 0.
// * Elements are int64 token ids or uint32 Unicode code points; insertions, deletions and
//   substitutions all cost 1.
// * `max_distances` [pairs] int64: k >= 0 bounds pair p's search to the band |i - j| <= k and
//   its answer is exact when the distance is <= k, else k + 1 ("more than k"); -1 means no bound.
// * Output `distances` [pairs] int64.
#pragma once

#include <cstdint>

namespace sleepcore::text {

// Throws std::invalid_argument on a max distance below -1 or on decreasing offsets.
void levenshtein_tokens(const int64_t* a, const int64_t* a_offsets, const int64_t* b, const int64_t* b_offsets,
                        int64_t pairs, const int64_t* max_distances, int64_t* distances, int num_threads);

void levenshtein_codepoints(const uint32_t* a, const int64_t* a_offsets, const uint32_t* b,
                            const int64_t* b_offsets, int64_t pairs, const int64_t* max_distances,
                            int64_t* distances, int num_threads);

}  // namespace sleepcore::text
