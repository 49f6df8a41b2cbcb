// Python bindings of the text family: raw pointers in, as in bindings.cpp. std::invalid_argument
// becomes ValueError; the Python layer (sleepcore.sleep.rewards) checks types and builds the
// flat buffers.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings.h"
#include "text/levenshtein.h"

namespace py = pybind11;

namespace sleepcore {

void bind_text(pybind11::module_& m) {
  m.def(
      "levenshtein_tokens",
      [](std::uintptr_t a, std::uintptr_t a_offsets, std::uintptr_t b, std::uintptr_t b_offsets, int64_t pairs,
         std::uintptr_t max_distances, std::uintptr_t distances, int num_threads) {
        py::gil_scoped_release release;
        text::levenshtein_tokens(as_ptr<const int64_t>(a), as_ptr<const int64_t>(a_offsets),
                                 as_ptr<const int64_t>(b), as_ptr<const int64_t>(b_offsets), pairs,
                                 as_ptr<const int64_t>(max_distances), as_ptr<int64_t>(distances), num_threads);
      },
      py::arg("a"), py::arg("a_offsets"), py::arg("b"), py::arg("b_offsets"), py::arg("pairs"),
      py::arg("max_distances"), py::arg("distances"), py::arg("num_threads"),
      "Banded Levenshtein distances of int64 token sequences, one per pair (k + 1 beyond a bound k); see "
      "csrc/text/levenshtein.h.");

  m.def(
      "levenshtein_codepoints",
      [](std::uintptr_t a, std::uintptr_t a_offsets, std::uintptr_t b, std::uintptr_t b_offsets, int64_t pairs,
         std::uintptr_t max_distances, std::uintptr_t distances, int num_threads) {
        py::gil_scoped_release release;
        text::levenshtein_codepoints(as_ptr<const uint32_t>(a), as_ptr<const int64_t>(a_offsets),
                                     as_ptr<const uint32_t>(b), as_ptr<const int64_t>(b_offsets), pairs,
                                     as_ptr<const int64_t>(max_distances), as_ptr<int64_t>(distances), num_threads);
      },
      py::arg("a"), py::arg("a_offsets"), py::arg("b"), py::arg("b_offsets"), py::arg("pairs"),
      py::arg("max_distances"), py::arg("distances"), py::arg("num_threads"),
      "Banded Levenshtein distances of uint32 code-point sequences, one per pair (k + 1 beyond a bound k); see "
      "csrc/text/levenshtein.h.");
}

}  // namespace sleepcore
