// Per-row divergence kernels on the CPU (OpenMP over rows).
//
// Both kernels work on one row of raw logits at a time, so a caller can run them on a
// row chunk of `hidden @ weight.T` and never hold N x V. See divergence_rows.cpp for the
// derivation.
//
// Conventions shared by both kernels (and by the Triton kernels in kernels/jsd.py):
// * `student` (and `teacher`) are [rows, vocab] raw logits with unit column stride and the
//   given row stride (in elements), of dtype `dtype`. Temperature T divides them inside.
// * beta follows TRL: beta == 0 is KL(teacher || student), beta == 1 is KL(student || teacher),
//   otherwise the generalized JSD on M = beta * P_teacher + (1 - beta) * P_student.
// * row_scale: [rows] float32. A row whose scale is exactly 0 is ignored: loss 0, grad row 0.
// * loss: [rows] float32 output, the per-row divergence (unscaled).
// * grad: [rows, vocab] output in `dtype`, or nullptr for forward only. It may alias `student`
//   (same pointer and row stride). grad[r, j] = row_scale[r] * d loss[r] / d student[r, j].
// * Accumulation is in float32 (row sums in double where noted in the .cpp).
#pragma once

#include <cstdint>

#include "cpu/dtype.h"

namespace sleepcore::cpu {

void jsd_rows(const void* student, int64_t student_stride, const void* teacher,
              int64_t teacher_stride, void* grad, int64_t grad_stride, DType dtype, int64_t rows,
              int64_t vocab, const float* row_scale, float* loss, double beta, double temperature,
              int num_threads);

// Top-k teacher: the divergence is taken over k + 1 bins, the k teacher token ids plus one
// "rest" bin that holds the remaining mass on each side.
// * teacher_ids: [rows, k] int64, distinct ids in [0, vocab) per row (out of range throws
//   std::invalid_argument, which pybind11 raises as ValueError).
// * teacher_logprobs: [rows, k] float32, the teacher's log-probs used as given (no temperature).
// * student bins: log p_i = z_i - lse(z) with z = student / T; log p_rest = lse over the ids
//   not in the row's top-k of z, minus lse(z).
// * teacher rest mass q_rest = max(0, 1 - sum_i exp(teacher_logprobs_i)).
// * each rest bin's log-prob is max(log(rest mass), kRestLogFloor), and its prob is exp of that;
//   when the floor is active no gradient flows through the rest bin.
constexpr double kRestLogFloor = -69.07755278982137;  // log(1e-30)

void topk_jsd_rows(const void* student, int64_t student_stride, const int64_t* teacher_ids,
                   int64_t ids_stride, const float* teacher_logprobs, int64_t logprobs_stride,
                   void* grad, int64_t grad_stride, DType dtype, int64_t rows, int64_t vocab,
                   int64_t k, const float* row_scale, float* loss, double beta,
                   double temperature, int num_threads);

}  // namespace sleepcore::cpu
