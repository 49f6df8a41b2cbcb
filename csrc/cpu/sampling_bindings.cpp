// Python bindings of the sampling family: raw pointers in, as in bindings.cpp.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings.h"
#include "cpu/sampling.h"

namespace py = pybind11;

namespace sleepcore {
void bind_sampling(pybind11::module_& m) {
  m.def(
      "sample_rows",
      [](std::uintptr_t logits, int64_t logits_stride, int dtype, int64_t rows, int64_t vocab,
         std::uintptr_t temperature, std::uintptr_t top_k, std::uintptr_t top_p, std::uintptr_t min_p,
         std::uintptr_t seeds, std::uintptr_t steps, std::uintptr_t token_ids, std::uintptr_t truncated_logp,
         int num_threads) {
        if (dtype < 0 || dtype > 2) throw py::value_error("dtype code must be 0 (fp32), 1 (bf16) or 2 (fp16)");
        const cpu::SamplingParams params{as_ptr<const double>(temperature), as_ptr<const int64_t>(top_k),
                                         as_ptr<const float>(top_p),       as_ptr<const float>(min_p),
                                         as_ptr<const int64_t>(seeds),     as_ptr<const int64_t>(steps)};
        py::gil_scoped_release release;
        return cpu::sample_rows(as_ptr<const void>(logits), logits_stride, as_dtype(dtype), rows,
                                vocab, params, as_ptr<int64_t>(token_ids), as_ptr<float>(truncated_logp),
                                num_threads);
      },
      py::arg("logits"), py::arg("logits_stride"), py::arg("dtype"), py::arg("rows"), py::arg("vocab"),
      py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("seeds"),
      py::arg("steps"), py::arg("token_ids"), py::arg("truncated_logp"), py::arg("num_threads"),
      "Sample one token per row (temperature, top-k, top-p, min-p, seeded Gumbel-max); returns -1 or the first "
      "row with NaN/+inf logits. See csrc/cpu/sampling.h.");

  m.def(
      "sampling_uniforms",
      [](int64_t seed, int64_t step, int64_t n, std::uintptr_t out) {
        cpu::sampling_uniforms(seed, step, n, as_ptr<float>(out));
      },
      py::arg("seed"), py::arg("step"), py::arg("n"), py::arg("out"),
      "The uniforms U(seed, step, j), j < n, that sample_rows draws with (float32, for tests).");
}

}  // namespace sleepcore
