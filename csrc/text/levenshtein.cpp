// Banded Levenshtein distance with early exit (Ukkonen 1985), batched over pairs with OpenMP.
//
// Recurrence. For x (length n) and y (length m), D[i][j] is the distance between x[:i] and y[:j]:
//   D[i][0] = i,  D[0][j] = j,
//   D[i][j] = min(D[i-1][j-1] + [x[i-1] != y[j-1]],  D[i-1][j] + 1,  D[i][j-1] + 1),
// and the answer is D[n][m].
//
// Why the band is enough. Every step of an alignment path changes i - j by at most 1 and each
// step that changes it costs 1, so D[i][j] >= |i - j|. With a bound k, let C = min(D, k + 1):
// min(k + 1, .) commutes with the recurrence's min and "+ 1", so C obeys the same recurrence
// capped at k + 1. Outside the band |i - j| <= k, C is exactly k + 1, so only the band's cells
// (at most 2k + 1 per row) need computing, with the cells beyond it read as k + 1. C[n][m] is the
// exact distance when it is <= k, else k + 1. If |n - m| > k the corner is outside the band and
// the answer is k + 1 at once.
//
// Early exit. An optimal path crosses every row i at some cell (i, j), D never decreases along
// it, and from (i, j) at least |(n - i) - (m - j)| more steps remain, so
//   D[n][m] >= min_j ( C[i][j] + |(n - i) - (m - j)| ).
// When that minimum over row i's band exceeds k (in particular, when every cell of the band
// exceeds k) the answer is k + 1 and the pair stops there.
//
// Cost O(k min(n, m)) time per pair (the shorter side indexes the rows) and O(max(n, m)) memory,
// one row updated in place. A common prefix and suffix are stripped first: they never change
// the distance (an optimal alignment can always match them).
#include "text/levenshtein.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace sleepcore::text {
namespace {

// C[n][m] = min(distance(x, y), k + 1) with 0 <= k; `row` is scratch memory.
template <class T>
int64_t banded_distance(const T* x, int64_t n, const T* y, int64_t m, int64_t k, std::vector<int64_t>& row) {
  while (n > 0 && m > 0 && x[0] == y[0]) ++x, ++y, --n, --m;
  while (n > 0 && m > 0 && x[n - 1] == y[m - 1]) --n, --m;
  if (n > m) std::swap(x, y), std::swap(n, m);  // rows over the shorter side
  const int64_t inf = k + 1;
  if (m - n > k) return inf;
  if (n == 0) return m;

  // row[j] holds C[i-1][j] inside row i-1's band, and row[hi + 1] = inf just past it.
  row.resize(static_cast<size_t>(m) + 2);
  const int64_t hi0 = std::min(m, k);
  for (int64_t j = 0; j <= hi0; ++j) row[j] = j;
  row[hi0 + 1] = inf;

  for (int64_t i = 1; i <= n; ++i) {
    const int64_t lo = std::max<int64_t>(1, i - k);
    const int64_t hi = std::min(m, i + k);
    const int64_t rest = m - n;  // (m - j) - (n - i) = rest + i - j
    int64_t diag, left, bound = inf;
    if (i <= k) {  // column 0 is in the band
      diag = row[0];
      row[0] = left = i;
      bound = i + std::abs(rest + i);
    } else {
      diag = row[lo - 1];
      left = inf;
    }
    const T xi = x[i - 1];
    for (int64_t j = lo; j <= hi; ++j) {
      const int64_t up = row[j];
      int64_t value = std::min(up, left) + 1;
      value = std::min(value, diag + (xi != y[j - 1] ? 1 : 0));
      value = std::min(value, inf);
      diag = up;
      row[j] = left = value;
      bound = std::min(bound, value + std::abs(rest + i - j));
    }
    row[hi + 1] = inf;  // row i + 1 reads it as the cell just beyond row i's band
    if (bound > k) return inf;
  }
  return row[m];
}

template <class T>
void levenshtein_pairs(const T* a, const int64_t* a_offsets, const T* b, const int64_t* b_offsets, int64_t pairs,
                       const int64_t* max_distances, int64_t* distances, int num_threads) {
  for (int64_t p = 0; p < pairs; ++p) {
    if (max_distances[p] < -1) throw std::invalid_argument("max distances must be >= -1 (-1: no bound)");
    if (a_offsets[p + 1] < a_offsets[p] || b_offsets[p + 1] < b_offsets[p])
      throw std::invalid_argument("sequence offsets must be non-decreasing");
  }
#pragma omp parallel num_threads(num_threads)
  {
    std::vector<int64_t> row;
#pragma omp for schedule(dynamic, 8)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t n = a_offsets[p + 1] - a_offsets[p];
      const int64_t m = b_offsets[p + 1] - b_offsets[p];
      const int64_t k = max_distances[p] < 0 ? std::max(n, m) : max_distances[p];
      distances[p] = banded_distance(a + a_offsets[p], n, b + b_offsets[p], m, k, row);
    }
  }
}

}  // namespace

void levenshtein_tokens(const int64_t* a, const int64_t* a_offsets, const int64_t* b, const int64_t* b_offsets,
                        int64_t pairs, const int64_t* max_distances, int64_t* distances, int num_threads) {
  levenshtein_pairs(a, a_offsets, b, b_offsets, pairs, max_distances, distances, num_threads);
}

void levenshtein_codepoints(const uint32_t* a, const int64_t* a_offsets, const uint32_t* b,
                            const int64_t* b_offsets, int64_t pairs, const int64_t* max_distances,
                            int64_t* distances, int num_threads) {
  levenshtein_pairs(a, a_offsets, b, b_offsets, pairs, max_distances, distances, num_threads);
}

}  // namespace sleepcore::text
