// The one pybind11 module, sleepcore._C. It links no libtorch: tensors arrive as raw data
// pointers (tensor.data_ptr()), sizes, row strides in elements and a dtype code; the Python
// layer (sleepcore.ops) has already checked shapes, dtypes, devices and contiguity.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings.h"
#include "cpu/divergence_rows.h"
#include "cpu/logprob_rows.h"
#ifdef SLEEPCORE_WITH_CUDA
#include "cuda/device_info.h"
#endif

namespace py = pybind11;
using sleepcore::as_dtype;
using sleepcore::as_ptr;

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = SLEEPCORE_VERSION;
  info["compiler"] = SLEEPCORE_COMPILER;
  info["openmp_threads"] = omp_get_max_threads();
#ifdef SLEEPCORE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = SLEEPCORE_CUDA_ARCHS;
  info["cuda_runtime_version"] = sleepcore::cuda::runtime_version();
  info["cuda_device_count"] = sleepcore::cuda::device_count();
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
  info["cuda_runtime_version"] = 0;
  info["cuda_device_count"] = 0;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sleepcore compiled core: CPU kernels (OpenMP) and CUDA sources, called with raw pointers.";
  m.def("build_info", &build_info, "Version, compiler, OpenMP threads and the CUDA build of this module.");

  m.def(
      "jsd_rows",
      [](std::uintptr_t student, int64_t student_stride, std::uintptr_t teacher, int64_t teacher_stride,
         std::uintptr_t grad, int64_t grad_stride, int dtype, int64_t rows, int64_t vocab,
         std::uintptr_t row_scale, std::uintptr_t loss, double beta, double temperature, int num_threads) {
        py::gil_scoped_release release;
        sleepcore::cpu::jsd_rows(as_ptr<const void>(student), student_stride, as_ptr<const void>(teacher),
                                 teacher_stride, as_ptr<void>(grad), grad_stride, as_dtype(dtype), rows, vocab,
                                 as_ptr<const float>(row_scale), as_ptr<float>(loss), beta, temperature,
                                 num_threads);
      },
      py::arg("student"), py::arg("student_stride"), py::arg("teacher"), py::arg("teacher_stride"),
      py::arg("grad"), py::arg("grad_stride"), py::arg("dtype"), py::arg("rows"), py::arg("vocab"),
      py::arg("row_scale"), py::arg("loss"), py::arg("beta"), py::arg("temperature"), py::arg("num_threads"),
      "Per-row generalized JSD and (when grad != 0) its gradient; see csrc/cpu/divergence_rows.h.");

  m.def(
      "topk_jsd_rows",
      [](std::uintptr_t student, int64_t student_stride, std::uintptr_t ids, int64_t ids_stride,
         std::uintptr_t logprobs, int64_t logprobs_stride, std::uintptr_t grad, int64_t grad_stride, int dtype,
         int64_t rows, int64_t vocab, int64_t k, std::uintptr_t row_scale, std::uintptr_t loss, double beta,
         double temperature, int num_threads) {
        py::gil_scoped_release release;
        sleepcore::cpu::topk_jsd_rows(as_ptr<const void>(student), student_stride, as_ptr<const int64_t>(ids),
                                      ids_stride, as_ptr<const float>(logprobs), logprobs_stride, as_ptr<void>(grad),
                                      grad_stride, as_dtype(dtype), rows, vocab, k, as_ptr<const float>(row_scale),
                                      as_ptr<float>(loss), beta, temperature, num_threads);
      },
      py::arg("student"), py::arg("student_stride"), py::arg("ids"), py::arg("ids_stride"), py::arg("logprobs"),
      py::arg("logprobs_stride"), py::arg("grad"), py::arg("grad_stride"), py::arg("dtype"), py::arg("rows"),
      py::arg("vocab"), py::arg("k"), py::arg("row_scale"), py::arg("loss"), py::arg("beta"),
      py::arg("temperature"), py::arg("num_threads"),
      "Per-row JSD against a top-k teacher over k + 1 bins; see csrc/cpu/divergence_rows.h.");

  m.def(
      "logprob_rows",
      [](std::uintptr_t logits, int64_t logits_stride, int dtype, int64_t rows, int64_t vocab, std::uintptr_t token_ids,
         double temperature, std::uintptr_t logp, std::uintptr_t entropy, std::uintptr_t lse, int num_threads) {
        py::gil_scoped_release release;
        sleepcore::cpu::logprob_rows(as_ptr<const void>(logits), logits_stride, as_dtype(dtype), rows, vocab,
                                     as_ptr<const int64_t>(token_ids), temperature, as_ptr<float>(logp),
                                     as_ptr<float>(entropy), as_ptr<float>(lse), num_threads);
      },
      py::arg("logits"), py::arg("logits_stride"), py::arg("dtype"), py::arg("rows"), py::arg("vocab"),
      py::arg("token_ids"), py::arg("temperature"), py::arg("logp"), py::arg("entropy"), py::arg("lse"),
      py::arg("num_threads"),
      "Per-row token log-prob, entropy (when entropy != 0) and logsumexp of logits / T; see "
      "csrc/cpu/logprob_rows.h.");

  m.def(
      "logprob_grad_rows",
      [](std::uintptr_t logits, int64_t logits_stride, std::uintptr_t grad, int64_t grad_stride, int dtype,
         int64_t rows, int64_t vocab, std::uintptr_t token_ids, double temperature, std::uintptr_t lse,
         std::uintptr_t entropy, std::uintptr_t grad_logp, std::uintptr_t grad_entropy, int num_threads) {
        py::gil_scoped_release release;
        sleepcore::cpu::logprob_grad_rows(as_ptr<const void>(logits), logits_stride, as_ptr<void>(grad), grad_stride,
                                          as_dtype(dtype), rows, vocab, as_ptr<const int64_t>(token_ids), temperature,
                                          as_ptr<const float>(lse), as_ptr<const float>(entropy),
                                          as_ptr<const float>(grad_logp), as_ptr<const float>(grad_entropy),
                                          num_threads);
      },
      py::arg("logits"), py::arg("logits_stride"), py::arg("grad"), py::arg("grad_stride"), py::arg("dtype"),
      py::arg("rows"), py::arg("vocab"), py::arg("token_ids"), py::arg("temperature"), py::arg("lse"),
      py::arg("entropy"), py::arg("grad_logp"), py::arg("grad_entropy"), py::arg("num_threads"),
      "Gradient w.r.t. the raw logits of sum_r grad_logp[r] logp[r] + grad_entropy[r] entropy[r] (grad_entropy "
      "may be 0); see csrc/cpu/logprob_rows.h.");

  sleepcore::bind_block_manager(m);
  sleepcore::bind_sampling(m);
  sleepcore::bind_paged_attention(m);
}
